"""What a step's Triton kernels cost an H200's SMs, found on any machine, GPU or not.

Triton ships ptxas and cuobjdump, so a kernel compiles for sm_90 without a GPU. `launches` runs a
step object's `_launch` with its module's kernels replaced by recorders (nothing executes; CPU
tensors do), `resources` compiles each launch as Triton's JIT would (argument types, 16-byte
alignment, ints equal to 1 as constants) and reads registers, spilled bytes, shared memory and
SASS instructions (MUFU among them) from the cubin, and how many warps of it an SM holds. Why it
matters: the whole step in one kernel (deleted since; eval/README.md) needed 255 registers a
thread, an SM held 8 of its warps, and it waited on memory latency (22% of the bandwidth limit);
the split step's kernels hold 12-32 warps an SM and the step moves its bytes at 2/3 of it
(Triton 3.6, the H200 machine's; other versions count registers differently). The instruction counts bound a kernel's issue time: `_ssm` with an
fp8 state and an fp32 update issued 864 a thread, 0.22 ms a step at 32,768 rows, of the 0.54 it
took; with the fp16 update 752 and 96 registers instead of 154 (20 warps an SM, not 12): 0.38 ms.

    python -m mamba_agent.eval.kernel_resources   # the shipped model's step kernels
"""

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton._C.libtriton import native_specialize_impl

H200 = GPUTarget("cuda", 90, 32)
SM_REGISTERS, SM_SHARED, SM_WARPS, SM_PROGRAMS = 65536, 233472, 64, 32  # per SM, sm_90


@dataclass
class Usage:
    kernel: str
    num_warps: int
    registers: int  # a thread
    spilled: int  # bytes of stack a thread (registers that did not fit)
    shared: int  # bytes a program
    instructions: int  # SASS instructions in the kernel (for a kernel without loops, what a thread issues)
    mufu: int  # of them, on the special-function units (exp2, rcp, ...: 16 lanes a clock an SM, FMA's 128)

    @property
    def warps_per_sm(self) -> int:
        by_registers = SM_REGISTERS // (-(-self.registers // 8) * 8 * 32 * self.num_warps)
        programs = min(by_registers, SM_SHARED // max(self.shared, 1), SM_WARPS // self.num_warps, SM_PROGRAMS)
        return programs * self.num_warps


def launches(step, module, *args) -> list[tuple]:
    """(kernel, bound arguments, launch options) of each launch `step._launch(*args)` makes; the
    kernels are the JIT functions defined in `module`."""
    calls = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def record(*a, **kw):
                options = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
                calls.append((self.fn, dict(zip(self.fn.arg_names, a)) | kw, options))
            return record

    kernels = {name: fn for name, fn in vars(module).items() if isinstance(fn, triton.runtime.JITFunction)}
    try:
        for name, fn in kernels.items():
            setattr(module, name, Recorder(fn))
        step._launch(*args)
    finally:
        for name, fn in kernels.items():
            setattr(module, name, fn)
    return calls


def resources(fn, bound: dict, options: dict, target: GPUTarget = H200) -> Usage:
    signature, constants, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        value = bound.get(name, param.default)
        kind, key = ("constexpr", value) if param.is_constexpr else native_specialize_impl(
            BaseBackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constants[(i,)] = key
        elif key == "D":  # divisible by 16: the JIT tells the compiler, which vectorises on it
            attrs[(i,)] = [["tt.divisibility", 16]]
    kernel = triton.compile(ASTSource(fn, signature, constants, attrs), target=target, options=options)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", out).groups()
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass)  # opcodes, predicates skipped
    return Usage(fn.__name__, kernel.metadata.num_warps, int(regs), int(stack), kernel.metadata.shared, len(ops),
                 ops.count("MUFU"))


def step_resources(step, module, policy, batch: int = 64, pair: bool = False,
                   state_dtype: torch.dtype = torch.bfloat16) -> list[Usage]:
    """Each distinct kernel (by name and options) of one greedy step of `step` (made from `policy`,
    its kernels defined in `module`) at `batch` rows with a `state_dtype` state; `pair`: a step
    that reads two tokens a row (SplitStepKernel.greedy_pair)."""
    state = step.init_state(batch, dtype=state_dtype)
    out = torch.zeros(batch, dtype=torch.int32)
    if pair:  # tokens (2, B) and n_feed
        args = (torch.zeros(2, batch, dtype=torch.long), state, None, out, torch.full((batch,), 2, dtype=torch.int32))
    else:
        args = (torch.zeros(batch, dtype=torch.long), state, None, out)
    seen, usages = set(), []
    for fn, bound, options in launches(step, module, *args):
        constants = tuple(bound.get(p.name, p.default) for p in fn.params if p.is_constexpr)
        key = (fn.__name__, constants, tuple(sorted(options.items())))
        if key not in seen:
            seen.add(key)
            usages.append(resources(fn, bound, options))
    return usages


def main() -> None:
    import argparse
    import json

    from mamba_agent.checkpoint import load_checkpoint
    from mamba_agent.policies import mamba_split_kernel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON list of {step, kernel, ...} instead of a table")
    args = ap.parse_args()
    policy = load_checkpoint("builtin:addition-mamba")[0]
    rows = []
    bf16, fp8 = torch.bfloat16, torch.float8_e4m3fn
    for pair, state in ((False, bf16), (True, bf16), (False, fp8)):
        step = mamba_split_kernel.SplitStepKernel(policy, weight_dtype="bfloat16")  # as `--state-dtype` runs it
        name = "SplitStepKernel" + (" (pairs)" if pair else "") + (", fp8 state" if state == fp8 else "")
        rows += [{"step": name, **vars(u), "warps_per_sm": u.warps_per_sm}
                 for u in step_resources(step, mamba_split_kernel, policy, pair=pair, state_dtype=state)]
    if args.json:
        print(json.dumps(rows))
        return
    print("The shipped model's step kernels (bf16 matmuls, bf16 state unless said, default tiles), compiled for sm_90:")
    for r in rows:
        print(f"  {r['step']:<34} {r['kernel']:<12} {r['num_warps']} warps  {r['registers']:>3} registers  "
              f"{r['spilled']:>5} B spilled  {r['shared']:>6} B shared  -> {r['warps_per_sm']} warps an SM; "
              f"{r['instructions']} instructions ({r['mufu']} MUFU)")


if __name__ == "__main__":
    main()
