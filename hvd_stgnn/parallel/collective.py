"""How a job's ranks agree: one verdict from rank 0, and one failure policy for the whole job.

- `run_on_root(backend, fn)`: rank 0 runs `fn`; every rank gets its result or its UserError.
- `run_collectively(backend, fn, prog)`: every rank runs `fn` (a whole command, e.g.
  training) and the job ends the right way whatever happens on any rank:
    * success: `backend.shutdown()`;
    * a UserError every rank raised alike (`all_ranks=True`): shutdown, one line from rank 0
      (printed by the CLI), the error's exit status on every rank;
    * anything else on one rank (a UserError only it saw, an exception, Ctrl-C): its peers
      may be waiting in a collective, so the job is aborted at once (MPI_Abort /
      destroy + exit) after that rank prints its error once, instead of hanging.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, Callable

from hvd_stgnn.errors import UserError, root_verdict
from hvd_stgnn.parallel.base import Backend


def run_on_root(backend: Backend, fn: Callable[[], Any]) -> Any:
    """Collective: `fn()` on rank 0 only, its result (or the same UserError) on every rank."""
    return root_verdict(fn, backend.is_root, backend.broadcast_object)


def run_collectively(backend: Backend, fn: Callable[[], Any], prog: str) -> Any:
    """Collective: run `fn()` on every rank under the job-wide failure policy above; `prog`
    (e.g. "hvd-stgnn train") prefixes a one-rank UserError's line."""
    try:
        result = fn()
    except (Exception, KeyboardInterrupt) as exc:
        if backend.size == 1:
            raise
        if isinstance(exc, UserError) and exc.all_ranks:
            backend.shutdown()
            raise
        if isinstance(exc, UserError):
            if backend.is_root:
                print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        else:
            sys.stderr.write("".join(f"[rank {backend.rank}] {line}\n" for line in traceback.format_exc().splitlines()))
            sys.stderr.flush()
        backend.abort(exc.exit_code if isinstance(exc, UserError) else 1)
    backend.shutdown()
    return result
