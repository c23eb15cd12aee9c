import threading
import time

import pytest

from arvision.errors import InputError
from arvision.serving.batching import BatchingQueue, QueueClosed, QueueFull


class Recorder:
    """A runner that records its batches; the first batch waits for ``release`` so that jobs pile up."""

    def __init__(self, fail_on=None):
        self.batches, self.release, self.started = [], threading.Event(), threading.Event()
        self.fail_on = fail_on

    def __call__(self, key, payloads):
        self.batches.append((key, list(payloads)))
        if len(self.batches) == 1:
            self.started.set()
            assert self.release.wait(10)
        if self.fail_on in payloads:
            raise ValueError(f"cannot run {self.fail_on}")
        return [f"{key}:{p}" for p in payloads]


def _queue(runner, **options):
    options = {"max_batch": 8, "max_wait_s": 0.0, **options}
    return BatchingQueue(runner, **options)


def test_jobs_of_one_key_run_together_oldest_key_first():
    runner = Recorder()
    queue = _queue(runner)
    first = queue.submit("a", 0)
    assert runner.started.wait(10)
    futures = [queue.submit(key, i) for i, key in enumerate("abab", start=1)]
    runner.release.set()
    assert first.result(10) == "a:0"
    assert [f.result(10) for f in futures] == ["a:1", "b:2", "a:3", "b:4"]
    assert runner.batches == [("a", [0]), ("a", [1, 3]), ("b", [2, 4])]
    stats = queue.stats()
    assert (stats.jobs, stats.batches, stats.largest_batch, stats.pending) == (5, 3, 2, 0)
    queue.close()


def test_a_batch_holds_at_most_max_batch_units():
    runner = Recorder()
    queue = _queue(runner, max_batch=8)
    queue.submit("a", "x", size=1)
    assert runner.started.wait(10)
    futures = [queue.submit("a", i, size=3) for i in range(3)]
    runner.release.set()
    [f.result(10) for f in futures]
    assert [payloads for _, payloads in runner.batches[1:]] == [[0, 1], [2]]
    with pytest.raises(InputError, match="1 to 8 items"):
        queue.submit("a", "big", size=9)
    queue.close()


def test_the_worker_waits_for_a_batch_to_fill():
    runner = Recorder()
    runner.release.set()
    queue = _queue(runner, max_wait_s=0.5)
    futures = [queue.submit("a", 0)]
    time.sleep(0.05)
    futures.append(queue.submit("a", 1))
    assert [f.result(10) for f in futures] == ["a:0", "a:1"]
    assert runner.batches == [("a", [0, 1])]
    queue.close()


def test_a_failing_batch_is_run_again_job_by_job():
    runner = Recorder(fail_on="bad")
    queue = _queue(runner)
    queue.submit("a", "first")
    assert runner.started.wait(10)
    good, bad = queue.submit("a", "good"), queue.submit("a", "bad")
    runner.release.set()
    assert good.result(10) == "a:good"
    with pytest.raises(ValueError, match="cannot run bad"):
        bad.result(10)
    assert [payloads for _, payloads in runner.batches[1:]] == [["good", "bad"], ["good"], ["bad"]]
    queue.close()


def test_a_cancelled_job_is_not_run():
    runner = Recorder()
    queue = _queue(runner)
    queue.submit("a", 0)
    assert runner.started.wait(10)
    dropped, kept = queue.submit("a", 1), queue.submit("a", 2)
    assert dropped.cancel()
    runner.release.set()
    assert kept.result(10) == "a:2"
    assert runner.batches[1] == ("a", [2])
    queue.close()


def test_jobs_whose_clients_went_away_free_their_places_at_once():
    runner = Recorder()
    queue = _queue(runner, max_pending=2)
    queue.submit("a", 0)
    assert runner.started.wait(10)
    abandoned = [queue.submit("a", 1), queue.submit("a", 2)]
    assert all(future.cancel() for future in abandoned)  # what the server does when the clients disconnect
    assert queue.stats().pending == 0
    kept = queue.submit("a", 3)  # not QueueFull, although the worker has not reached the cancelled jobs yet
    runner.release.set()
    assert kept.result(10) == "a:3" and runner.batches[1] == ("a", [3])
    queue.close()


def test_a_full_queue_refuses_and_close_fails_the_waiting_jobs():
    runner = Recorder()
    queue = _queue(runner, max_pending=2)
    running = queue.submit("a", 0)
    assert runner.started.wait(10)
    waiting = [queue.submit("a", 1), queue.submit("a", 2)]
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        queue.submit("a", 3)
    closer = threading.Thread(target=queue.close)
    closer.start()
    for future in waiting:
        with pytest.raises(QueueClosed):
            future.result(10)
    runner.release.set()
    closer.join(10)
    assert running.result(10) == "a:0"  # the batch that had started finishes
    with pytest.raises(QueueClosed, match="shutting down"):
        queue.submit("a", 4)
