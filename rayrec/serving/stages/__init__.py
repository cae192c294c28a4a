"""Stage logic: plain classes with no Ray and no HTTP in them, unit-tested in process.

``PreprocessorLogic`` (:mod:`.preprocess`), ``HistoryEncoderLogic`` (:mod:`.encode`),
``RetrievalLogic`` (:mod:`.scoring`, over the ``ItemIndex`` of :mod:`.index` and the
``TextSearch`` of :mod:`.search`), ``FeedbackLogic`` (:mod:`.feedback`), ``PipelineLogic``
(:mod:`.pipeline`: the three read stages in one process), ``ModelSlots`` (:mod:`.generations`:
a request pinned to one model generation) and the request errors they raise (:mod:`.errors`).
"""
