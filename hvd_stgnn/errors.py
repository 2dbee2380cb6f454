"""Errors that mean "the user's input is wrong": reported as one line, exit status 2."""


class UserError(Exception):
    """Bad input (file, flag, value). The message names the file or flag and the problem.

    `all_ranks=True` says every rank of the job raised it with the same message (a verdict
    broadcast from rank 0, or arithmetic every rank does alike): the job can then end
    cleanly with one line from rank 0, without MPI_Abort.
    """

    exit_code = 2

    def __init__(self, message: str, *, all_ranks: bool = False) -> None:
        super().__init__(message)
        self.all_ranks = all_ranks


class DataError(UserError):
    """A data file is missing, unreadable or does not follow docs/data-format.md."""


class ConfigError(UserError):
    """A flag or config value is invalid."""


class Interrupted(UserError):
    """The job was asked to stop (SIGTERM from a scheduler's time limit) and saved a
    checkpoint first; every rank agrees. Exit status 143 = 128 + SIGTERM."""

    exit_code = 143

    def __init__(self, message: str) -> None:
        super().__init__(message, all_ranks=True)


def root_verdict(fn, is_root: bool, broadcast):
    """Run `fn()` on rank 0 only; every rank returns its result, or raises the same UserError
    (with all_ranks=True, so the job ends cleanly with one line from rank 0).

    broadcast: obj -> rank 0's obj on every rank (a backend's `broadcast_object`, or
    `lambda o: comm.bcast(o, root=0)` before there is a backend).
    """
    result, error = None, None
    if is_root:
        try:
            result = fn()
        except UserError as exc:
            error = (type(exc), str(exc))
    result, error = broadcast((result, error))
    if error is not None:
        raise error[0](error[1], all_ranks=True)
    return result
