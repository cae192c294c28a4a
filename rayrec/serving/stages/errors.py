"""Errors a stage raises for bad requests; the ingress turns them into 4xx answers."""

from __future__ import annotations


class RequestError(Exception):
    """The request is wrong; ``field`` names the offending field (dotted path)."""

    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # keep the fields when Ray pickles the error across processes
        return (type(self), (self.field, self.message))


class NotFoundError(RequestError):
    """An item or user named in the path does not exist."""

    status_code = 404


class ForbiddenError(RequestError):
    """The request asks for something this server is configured never to do (e.g. load a model
    directory outside ``model_roots``)."""

    status_code = 403


class ConflictError(RequestError):
    """The request clashes with the server's current state (e.g. an experiment is running already)."""

    status_code = 409


class StageError:
    """A :class:`RequestError` returned (not raised) by a stage across a handle call.

    Returning it keeps bad requests out of the replicas' error logs and avoids exception
    round trips; the ingress raises it again with :meth:`raise_for`.
    """

    __slots__ = ("kind", "field", "message")

    def __init__(self, error: RequestError) -> None:
        self.kind = type(error)
        self.field = error.field
        self.message = error.message

    @staticmethod
    def raise_for(result):
        """Return ``result``, or raise the request error it stands for."""
        if isinstance(result, StageError):
            raise result.kind(result.field, result.message)
        return result
