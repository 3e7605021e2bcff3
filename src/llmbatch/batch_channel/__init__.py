"""The batch channel inside the engine's event loop: gather, reserve, send, poll, settle, fall back.

The engine hands every claimed task of a job that may use a discount channel to `BatchRunner.take`, which
keeps the tasks whose channel (channels.choose) is batch and returns the rest to the engine. Kept tasks:

1. gather per job and model for `batch_linger_s` after the last arrival (or until the provider's request
   limit), then split to the provider's limits (requests and bytes);
2. each batch's lines are reserved at their upper bound at the batch price, with the batch's row, in ONE
   transaction before anything is sent (store/batches.open_batch): the hard cap holds. When the whole batch
   does not fit, the part that fits is sent; the rest waits for a batch of the job to settle (which frees the
   difference between bound and cost), or is skipped as `budget` when nothing the job has in flight can free
   money;
3. the batch is sent (tagged, so a worker that dies between "create" and "record" finds it again instead of
   making a second one) and its provider id recorded;
4. a poller (an asyncio task, not a thread) polls with a doubling wait up to `batch_poll_max_s`, and checks
   the job's cancel flag and deadline every second without calling the provider;
5. when the batch ends, each line is settled from its own usage at the batch price and its task recorded;
   lines that errored, expired or were cancelled are settled (released unless they carry usage) and run
   online. At the deadline's fallback point an unfinished batch is cancelled, its finished lines settled
   (they are billed) and the rest run online;
6. a task claimed while its line sits in a batch another worker owns is left to that batch's owner; when
   the owner's lease lapses, the claiming worker takes the batch over (store/batches.take_over).
"""

from .cancel import cancel_job_batches
from .runner import BatchRunner

__all__ = ["BatchRunner", "cancel_job_batches"]
