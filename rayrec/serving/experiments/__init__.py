"""Online experiments (A/B tests between models): the spec, the assignment of users to arms,
the attribution of feedback to what was shown, and the readout. Plain logic: no Ray, no HTTP.

An arm is a whole model pipeline: its model directory is registered in the state store as a
model generation of its own (status ``arm``), and every stage keeps the arms' generations
loaded next to the live one (:class:`~rayrec.serving.stages.generations.ModelSlots`). A request
assigned to an arm is pinned to that arm's generation end to end, exactly as a request is
pinned to the live generation during a reload.
"""
