"""Dynamic batching: concurrent requests to one signature run as one call.

Rows are independent by the export contract (a row's sample depends on its
own seed and settings alone), so the rows of several requests may be
concatenated, run through the graph once and split back: each request gets
exactly the rows it would have got alone. One worker per signature (and
version) takes the waiting requests in arrival order, up to `max_rows`
rows; when it was idle it first waits up to `wait_s` for more to arrive,
while it is busy requests gather by themselves (as TF Serving's batching
does). Requests merge only when every input has the same dtype and row
shape, and the same value in inputs the export needs constant across a
call (a diffusion model's `num_steps`); any other request waits for a later
call. When a merged call fails (one request breaks a bound of the whole
call, such as a diffusion export's rows x steps), each of its requests runs
alone, so only the one at fault gets the error.
"""

import asyncio
import time

import numpy as np


def merge_key(inputs, uniform):
    """What requests must share to run in one call, or `None` when this one
    cannot merge (an input without a batch axis, or inputs of different row
    counts: the graph answers those alone, with its own message)."""
    rows = None
    key = []
    for name in sorted(inputs):
        array = inputs[name]
        if array.ndim == 0:
            return None
        if rows is None:
            rows = len(array)
        elif len(array) != rows:
            return None
        part = (name, array.dtype.str, array.shape[1:])
        if name in uniform:
            values = np.unique(array)
            if len(values) != 1:
                return None
            part += (values[0].item(),)
        key.append(part)
    return tuple(key)


class _Pending:
    __slots__ = ("inputs", "rows", "key", "future", "arrival")

    def __init__(self, inputs, rows, key, future):
        self.inputs, self.rows, self.key, self.future = inputs, rows, key, future
        self.arrival = time.monotonic()


class Batcher:
    """Merges concurrent calls of one signature.

    Args:
        run: `run(inputs) -> outputs`, blocking (the signature's call); run
            in `executor`.
        max_rows: the most rows of one merged call.
        wait_s: how long an idle worker waits for more requests.
        uniform: names of inputs whose value must be the same in a call.
        executor: where `run` runs (`None`: the loop's default executor).
        on_call: `on_call(requests)` after each call, for metrics.
    """

    def __init__(self, run, max_rows, wait_s, uniform=(), executor=None, on_call=None):
        self.run = run
        self.max_rows = max_rows
        self.wait_s = wait_s
        self.uniform = frozenset(uniform)
        self.executor = executor
        self.on_call = on_call
        self._pending = []
        self._arrived = None
        self._worker = None

    async def submit(self, inputs, rows):
        """`run(inputs)` answered alone or within a merged call."""
        loop = asyncio.get_running_loop()
        key = merge_key(inputs, self.uniform)
        if key is None or rows > self.max_rows:
            return await self._call(loop, [inputs])
        future = loop.create_future()
        self._pending.append(_Pending(inputs, rows, key, future))
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        return await future

    async def _call(self, loop, parts):
        result = await loop.run_in_executor(self.executor, self.run, _concat(parts))
        if self.on_call:
            self.on_call(len(parts))
        return result

    def _compatible(self, key):
        group, rows = [], 0
        for item in self._pending:
            if item.key == key and rows + item.rows <= self.max_rows:
                group.append(item)
                rows += item.rows
        return group, rows

    async def _work(self):
        loop = asyncio.get_running_loop()
        while self._pending:
            first = self._pending[0]
            deadline = first.arrival + self.wait_s
            while True:
                group, rows = self._compatible(first.key)
                left = deadline - time.monotonic()
                if rows >= self.max_rows or left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    pass
            taken = set(map(id, group))
            self._pending = [p for p in self._pending if id(p) not in taken]
            await self._answer(loop, group)

    async def _answer(self, loop, group):
        group = [p for p in group if not p.future.cancelled()]
        if not group:
            return
        total = sum(p.rows for p in group)
        try:
            outputs = await self._call(loop, [p.inputs for p in group])
            if len(group) > 1 and any(np.ndim(v) == 0 or len(v) != total
                                      for v in outputs.values()):
                raise ValueError("an output has no batch axis: rows cannot be split")
        except Exception as error:
            if len(group) == 1:
                _settle(group[0].future, error=error)
                return
            # One request may break a bound of the merged call (or the outputs
            # cannot be split): answer each alone.
            for p in group:
                try:
                    _settle(p.future, await self._call(loop, [p.inputs]))
                except Exception as alone_error:
                    _settle(p.future, error=alone_error)
            return
        start = 0
        for p in group:
            _settle(p.future, {k: v[start : start + p.rows] for k, v in outputs.items()})
            start += p.rows


def _concat(parts):
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _settle(future, result=None, error=None):
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
