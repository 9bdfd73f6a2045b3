"""How engine threads split the cores (`Engine.computing`): never more OpenMP threads than cores while
several engine threads are active, every core to a thread that has been alone for a while."""

from __future__ import annotations

import threading
import types

import torch

from suntool.serve import engine as engine_module
from suntool.serve.engine import Engine


def stub(cores: int = 2, torch_threads: int | None = None):
    return types.SimpleNamespace(_lock=threading.Lock(), _in_forward=set(), _engaged=set(), _last_forward={},
                                 cores=cores, config=types.SimpleNamespace(torch_threads=torch_threads))


def threads_in_forward(engine, before=None) -> int:
    """torch's intra-op threads inside one forward on a fresh thread (after `before` ran on that thread)."""
    seen = []

    def body():
        if before:
            before()
        with Engine.computing(engine):
            seen.append(torch.get_num_threads())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return seen[0]


def test_a_thread_alone_takes_every_core():
    assert threads_in_forward(stub(cores=2)) == 2


def test_a_forward_next_to_a_decoding_worker_takes_its_share():
    engine = stub(cores=4)
    engine._engaged.add(-1)  # a decode worker with running sequences, between two steps
    assert threads_in_forward(engine) == 2
    engine._in_forward.add(-2)  # and another thread inside a forward
    assert threads_in_forward(engine) == 1


def test_a_thread_that_just_finished_a_forward_still_counts(monkeypatch):
    engine = stub(cores=2)
    clock = [100.0]
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: clock[0])
    engine._last_forward[-1] = 99.5  # a prefill worker, half a second ago: prompts keep coming
    assert threads_in_forward(engine) == 1
    # past the linger of both the prefill worker and the forward just run (a thread ident that
    # the next thread may or may not reuse)
    clock[0] = 100.0 + engine_module.THREAD_LINGER_S + 0.01
    assert threads_in_forward(engine) == 2


def test_decode_worker_engagement_is_per_thread_and_torch_threads_wins():
    engine = stub(cores=2)
    assert threads_in_forward(engine, before=lambda: Engine.engaged(engine, True)) == 2  # itself only
    engine._engaged.clear()
    engaged, release = threading.Event(), threading.Event()

    def decode_worker():  # stays alive (thread idents are reused once a thread ends)
        Engine.engaged(engine, True)
        engaged.set()
        release.wait(10)
        Engine.engaged(engine, False)

    worker = threading.Thread(target=decode_worker)
    worker.start()
    engaged.wait(10)
    assert threads_in_forward(engine) == 1  # next to a worker that has sequences running
    release.set()
    worker.join()
    engine._last_forward.clear()  # past the linger of the forwards above
    assert not engine._engaged and threads_in_forward(engine) == 2
    fixed = stub(cores=8, torch_threads=3)
    fixed._engaged.update({-1, -2})
    assert threads_in_forward(fixed) == 3
