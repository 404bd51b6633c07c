"""`TensorRows.advance` as one Triton kernel: Episode's rules and a memory tool for every row.

A lane per row for pointer memory (BLOCK rows a program); a program per row for search memory,
whose `[FIND]` scans the row's whole memory in blocks of SCAN tokens. The state is
tensor_rows.py's (per-row counters in `ints`, flags in `flags`, the token buffers; its
INT_FIELDS and FLAG_FIELDS are the order of this kernel's `<field>_ptr` arguments, its EXIT_CODES
the exit codes written here); the rules are
Episode's, tested against it token by token (tests/test_tensor_rows.py, in Triton's interpreter
without a GPU). What a row reads next is, in order: its prompt, the observation it is owed, else
the model's token, which is carried out now.
"""

import triton
import triton.language as tl

from mamba_agent.tensor_rows import SEARCH
from mamba_agent.vocab import ANS, EDGE, END, EOS, ERR, FIND, OBS_END, PAD


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _previous_newline(mem, idx, inside, carry):
    """For each position, the last newline before it (-1: none), given the last one before the block."""
    before = tl.load(mem + idx - 1, mask=inside & (idx > 0), other=0) == 10
    return tl.maximum(carry, tl.associative_scan(tl.where(before, idx - 1, -1), 0, _max))


@triton.jit
def _find(mem, mem_len, arg, plen, obs, line, SCAN: tl.constexpr, OBS_END: tl.constexpr):
    """SearchMemory.command for one row: every line of mem[:mem_len] that holds arg[:plen] (a
    non-empty pattern without a newline), each with a newline, then [/OBS], into obs; returns its
    length. Pass 1 marks each line (at its first position, in `line`) that holds a match; pass 2
    copies the marked lines in order."""
    last_nl = mem_len * 0 - 1  # the last newline before the block (a scalar of mem_len's type)
    last_hit = last_nl  # the last match before the block
    for start in range(0, mem_len, SCAN):
        idx = start + tl.arange(0, SCAN)
        inside = idx < mem_len
        tok = tl.load(mem + idx, mask=inside, other=0)
        hit = inside & (idx + plen <= mem_len)
        k = 0
        while (k < plen) & (tl.max(hit.to(tl.int32), 0) > 0):
            hit &= tl.load(mem + idx + k, mask=hit, other=-1) == tl.load(arg + k)
            k += 1
        prev_nl = _previous_newline(mem, idx, inside, last_nl)
        hit_upto = tl.maximum(last_hit, tl.associative_scan(tl.where(hit, idx, -1), 0, _max))
        newline = inside & (tok == 10)
        tl.store(line + prev_nl + 1, (hit_upto > prev_nl).to(tl.int8), mask=newline)  # the line it ends
        last_nl = tl.maximum(last_nl, tl.max(tl.where(newline, idx, -1), 0))
        last_hit = tl.maximum(last_hit, tl.max(tl.where(hit, idx, -1), 0))
    tail_hit = (last_nl + 1 < mem_len) & (last_hit > last_nl)  # the unfinished last line
    tl.store(line + last_nl + 1, tail_hit.to(tl.int8), mask=last_nl + 1 < mem_len)
    tl.debug_barrier()  # pass 2 reads what every thread stored
    count = mem_len * 0
    last_nl = count - 1
    for start in range(0, mem_len, SCAN):
        idx = start + tl.arange(0, SCAN)
        inside = idx < mem_len
        tok = tl.load(mem + idx, mask=inside, other=0)
        prev_nl = _previous_newline(mem, idx, inside, last_nl)
        keep = inside & (tl.load(line + prev_nl + 1, mask=inside, other=0) != 0)
        tl.store(obs + count + tl.cumsum(keep.to(tl.int32), 0) - 1, tok, mask=keep)
        count += tl.sum(keep.to(tl.int32), 0)
        last_nl = tl.maximum(last_nl, tl.max(tl.where(inside & (tok == 10), idx, -1), 0))
    tl.store(obs + count, 10, mask=tail_hit)  # grep shows a last line without its newline with one
    count += tail_hit.to(tl.int32)
    tl.store(obs + count, OBS_END)
    tl.debug_barrier()  # the first observation token is read below, maybe by another thread
    return count + 1


@triton.jit
def _pointer(token, free, rows, m, tape, obs, tape_len, pos_ptr, pointer_of_ptr, move_of_ptr, W, P: tl.constexpr,
             EDGE: tl.constexpr):
    """PointerMemory.command for the rows whose token is a pointer command of the task's P: a read
    answers the cell (or [EDGE]) into obs; a move stops one past either end. Returns (a command,
    the observation tokens made)."""
    p = tl.where(free, tl.load(pointer_of_ptr + token, mask=m, other=P), P)
    ok = p < P
    at_ptr = pos_ptr + rows * (P + 1) + p
    at = tl.load(at_ptr, mask=m, other=0)
    move = tl.load(move_of_ptr + token, mask=m, other=0)
    read = ok & (move == 0)
    cell = tl.load(tape + tl.minimum(tl.maximum(at, 0), W - 1), mask=read, other=0)
    tl.store(at_ptr, tl.minimum(tl.maximum(at + move, -1), tape_len), mask=ok)
    tl.store(obs, tl.where((at >= 0) & (at < tape_len), cell, EDGE).to(tl.int16), mask=read)
    return ok, read.to(tl.int32)


@triton.jit
def _search(token, carry, free, arg_open, rows, m, tape_ptr, tape_len, obs_ptr, arg_ptr, line_ptr, calls_ptr,
            arg_open_ptr, arg_len_ptr, arg_nl_ptr, n_calls_ptr, max_repeats_ptr, W, OW, SCAN: tl.constexpr,
            CALLS: tl.constexpr, END: tl.constexpr, ERR: tl.constexpr, FIND: tl.constexpr, OBS_END: tl.constexpr):
    """Episode's argument and repeat rules and SearchMemory.command, for one row (BLOCK is 1):
    [FIND] opens an argument, every token up to [END] joins it, [END] runs the search into obs,
    and the call (its argument and answer, hashed) joins the row's last calls. Returns (a
    command: [FIND] opened one, the search ran, the observation tokens made, the last calls
    repeat a cycle)."""
    arg_len = tl.load(arg_len_ptr + rows, mask=m, other=0)
    arg_nl = tl.load(arg_nl_ptr + rows, mask=m, other=0) != 0
    inside = carry & arg_open
    ok = inside & (token == END)
    joins = inside & ~ok
    opens = free & (token == FIND)
    tl.store(arg_ptr + rows.to(tl.int64) * W + arg_len, token.to(tl.int16), mask=joins)
    arg_len = tl.where(opens, 0, arg_len + joins.to(tl.int32))
    arg_nl = (arg_nl & ~opens) | (joins & (token == 10))
    tl.store(arg_open_ptr + rows, ((arg_open & ~ok) | opens).to(tl.int8), mask=m)
    tl.store(arg_len_ptr + rows, arg_len, mask=m)
    tl.store(arg_nl_ptr + rows, arg_nl.to(tl.int8), mask=m)
    made, repeats = tl.zeros_like(arg_len), rows < 0
    if tl.max(ok.to(tl.int32), 0) > 0:
        row = tl.max(rows, 0).to(tl.int64)
        plen = tl.max(arg_len, 0)
        out = obs_ptr + row * OW
        if plen == 0:  # grep would answer everything: never useful
            tl.store(out, ERR)
            tl.store(out + 1, OBS_END)
            n = plen + 2
        elif tl.max(arg_nl.to(tl.int32), 0) > 0:  # no line holds a newline
            tl.store(out, OBS_END)
            n = plen * 0 + 1
        else:
            n = _find(tape_ptr + row * W, tl.max(tape_len, 0), arg_ptr + row * W, plen, out, line_ptr + row * W, SCAN,
                      OBS_END)
        tl.debug_barrier()
        made += n
        # The call [FIND] argument | answer, as one number: a sum of one hash per (place, token).
        h = _hash(tl.zeros_like(plen), FIND) + _hash(plen + 1, -1)
        h = _hash_run(h, arg_ptr + row * W, plen, 1, SCAN)
        h = _hash_run(h, out, n, plen + 2, SCAN)
        calls = calls_ptr + row * CALLS
        n_calls = tl.max(tl.load(n_calls_ptr + rows, mask=m, other=0), 0)
        tl.store(calls + n_calls % CALLS, h.to(tl.int32))
        n_calls += 1
        tl.store(n_calls_ptr + rows, n_calls + tl.zeros_like(arg_len), mask=m)
        tl.debug_barrier()
        max_repeats = tl.max(tl.load(max_repeats_ptr + rows, mask=m, other=0), 0)
        found = n_calls * 0
        for p in tl.static_range(1, 5):  # a cycle of p calls, max_repeats times over
            if n_calls >= max_repeats * p:
                same = n_calls * 0 + 1
                for k in range(1, max_repeats):
                    for j in tl.static_range(p):
                        a = tl.load(calls + (n_calls - 1 - j) % CALLS)
                        same &= (a == tl.load(calls + (n_calls - 1 - j - k * p) % CALLS)).to(tl.int32)
                found |= same
        repeats = m & (found > 0)
    return opens, ok, made, repeats


@triton.jit
def _hash(place, token):
    """One (place, token) of a call as a 32-bit number (lowbias32's mixer); a call sums them."""
    x = ((place << 9) | (token + 1)).to(tl.uint32)
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x2C1B3C6D
    x ^= x >> 16
    return x


@triton.jit
def _hash_run(h, tokens, n, first, SCAN: tl.constexpr):
    """h plus the hashes of tokens[:n], at places first, first + 1, ..."""
    for start in range(0, n, SCAN):
        idx = start + tl.arange(0, SCAN)
        t = tl.load(tokens + idx, mask=idx < n, other=0).to(tl.int32)
        h += tl.sum(tl.where(idx < n, _hash(first + idx, t), 0).to(tl.uint32), 0)
    return h


@triton.jit
def _advance(
    sampled_ptr, feed_ptr, n_feed_ptr, tape_ptr, obs_ptr, expected_ptr, log_ptr, pos_ptr, pointer_of_ptr,
    move_of_ptr, arg_ptr, line_ptr, calls_ptr,
    prompt_len_ptr, tape_len_ptr, fed_ptr, n_forced_ptr, n_tokens_ptr, n_model_ptr, format_errors_ptr, ans_at_ptr,
    diverged_at_ptr, expected_len_ptr, max_tokens_ptr, max_format_errors_ptr, max_repeats_ptr, obs_len_ptr,
    obs_pos_ptr, arg_len_ptr, n_calls_ptr, log_slot_ptr,
    exit_ptr, after_ans_ptr, stop_at_divergence_ptr, arg_open_ptr, arg_nl_ptr,
    B, W, OW, E, LW,
    TOOL: tl.constexpr, P: tl.constexpr, PAIR: tl.constexpr, BLOCK: tl.constexpr, SCAN: tl.constexpr, CALLS: tl.constexpr,
    ANS: tl.constexpr, EDGE: tl.constexpr, END: tl.constexpr, EOS: tl.constexpr, ERR: tl.constexpr,
    FIND: tl.constexpr, OBS_END: tl.constexpr, PAD: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = rows < B
    tape = tape_ptr + rows.to(tl.int64) * W
    obs = obs_ptr + rows.to(tl.int64) * OW
    exit_code = tl.load(exit_ptr + rows, mask=m, other=7).to(tl.int32)  # masked lanes: IDLE
    live = m & (exit_code == 0)
    after_ans = tl.load(after_ans_ptr + rows, mask=m, other=0) != 0
    fed = tl.load(fed_ptr + rows, mask=m, other=0)
    prompt_len = tl.load(prompt_len_ptr + rows, mask=m, other=0)
    obs_len = tl.load(obs_len_ptr + rows, mask=m, other=0)
    obs_pos = tl.load(obs_pos_ptr + rows, mask=m, other=0)
    tape_len = tl.load(tape_len_ptr + rows, mask=m, other=0)
    n_tokens = tl.load(n_tokens_ptr + rows, mask=m, other=0)
    n_model = tl.load(n_model_ptr + rows, mask=m, other=0)
    format_errors = tl.load(format_errors_ptr + rows, mask=m, other=0)

    # What the row reads now: its prompt (tape[i - 1] is prompt[i]), an observation it is owed, or
    # the model's token, which is carried out.
    in_prompt = fed < prompt_len
    has_obs = ~in_prompt & (obs_pos < obs_len)
    prompt_token = tl.load(tape + tl.maximum(fed - 1, 0), mask=m & in_prompt, other=0).to(tl.int32)
    obs_token = tl.load(obs + obs_pos, mask=m & has_obs, other=0).to(tl.int32)
    sampled = tl.load(sampled_ptr + rows, mask=m, other=0).to(tl.int32)
    token = tl.where(in_prompt, prompt_token, tl.where(has_obs, obs_token, sampled))
    acts = live & ~in_prompt & ~has_obs
    obs_pos += (live & has_obs).to(tl.int32)

    # The oracle: the first model token that differs from it is where the row diverged; with
    # stop_at_divergence the row ends there, the token recorded and not carried out.
    expected_len = tl.load(expected_len_ptr + rows, mask=m, other=-1)
    diverged_at = tl.load(diverged_at_ptr + rows, mask=m, other=0)
    checks = acts & (expected_len >= 0) & (diverged_at < 0)
    want = tl.load(expected_ptr + rows.to(tl.int64) * E + tl.minimum(n_model, E - 1), mask=checks, other=-1)
    diverges = checks & ((n_model >= expected_len) | (want.to(tl.int32) != token))
    diverged_at = tl.where(diverges, n_model, diverged_at)
    stop = diverges & (tl.load(stop_at_divergence_ptr + rows, mask=m, other=0) != 0)
    slot = tl.load(log_slot_ptr + rows, mask=m, other=-1)  # a row whose model tokens the host replays
    tl.store(log_ptr + slot.to(tl.int64) * LW + n_model, token.to(tl.int16), mask=acts & (slot >= 0))
    n_model += acts.to(tl.int32)
    carry = acts & ~stop

    # Thoughts and outputs (bytes, and the first [ANS]) are written to the memory, outside an argument.
    if TOOL == 1:  # SEARCH
        arg_open = tl.load(arg_open_ptr + rows, mask=m, other=0) != 0
    else:
        arg_open = rows < 0
    free = carry & ~arg_open
    writes = free & ((token < 256) | ((token == ANS) & ~after_ans))
    tl.store(tape + tape_len, token.to(tl.int16), mask=writes)
    ans_at = tl.load(ans_at_ptr + rows, mask=m, other=-1)
    ans_at = tl.where(writes & (token == ANS), tape_len, ans_at)
    after_ans |= writes & (token == ANS)
    eos = free & (token == EOS)

    if TOOL == 0:
        handled, made = _pointer(token, free, rows, m, tape, obs, tape_len, pos_ptr, pointer_of_ptr, move_of_ptr, W,
                                 P, EDGE)
        ok, repeats = handled, rows < 0  # a command carried out: the format errors start again
    else:
        handled, ok, made, repeats = _search(
            token, carry, free, arg_open, rows, m, tape_ptr, tape_len, obs_ptr, arg_ptr, line_ptr, calls_ptr,
            arg_open_ptr, arg_len_ptr, arg_nl_ptr, n_calls_ptr, max_repeats_ptr, W, OW, SCAN, CALLS, END, ERR, FIND,
            OBS_END)
    malformed = free & ~handled & ~writes & ~eos
    tl.store(obs, ERR, mask=malformed)
    made += malformed.to(tl.int32)
    new_obs = made > 0
    obs_len = tl.where(new_obs, made, obs_len)
    obs_pos = tl.where(new_obs, 0, obs_pos)
    format_errors = tl.where(malformed, format_errors + 1, tl.where(writes | ok, 0, format_errors))
    n_tokens += acts.to(tl.int32) + made
    max_tokens = tl.load(max_tokens_ptr + rows, mask=m, other=0)
    max_format_errors = tl.load(max_format_errors_ptr + rows, mask=m, other=0)
    exit_code = tl.where(stop, 4, tl.where(eos, 1, tl.where(repeats, 6, tl.where(  # EXIT_CODES: diverged,
        acts & (n_tokens >= max_tokens), 2, tl.where(  # finished, repeating, token_limit,
            acts & (format_errors >= max_format_errors), 3, exit_code)))))  # format_errors
    n_forced = tl.load(n_forced_ptr + rows, mask=m, other=0) + (live & ~acts).to(tl.int32)
    fed += live.to(tl.int32)
    tl.store(feed_ptr + rows, token, mask=m)
    if PAIR:  # the token after it, where that one is forced too: read in the same step
        in_prompt = fed < prompt_len
        second = (exit_code == 0) & (in_prompt | (obs_pos < obs_len))
        token = tl.where(in_prompt, tl.load(tape + tl.maximum(fed - 1, 0), mask=m & in_prompt, other=0),
                         tl.load(obs + obs_pos, mask=m & second & ~in_prompt, other=0)).to(tl.int32)
        tl.store(feed_ptr + B + rows, tl.where(second, token, PAD), mask=m)
        tl.store(n_feed_ptr + rows, 1 + second.to(tl.int32), mask=m)
        obs_pos += (second & ~in_prompt).to(tl.int32)
        fed += second.to(tl.int32)
        n_forced += second.to(tl.int32)
    tl.store(fed_ptr + rows, fed, mask=m)
    tl.store(n_forced_ptr + rows, n_forced, mask=m)
    tl.store(obs_len_ptr + rows, obs_len, mask=m)
    tl.store(obs_pos_ptr + rows, obs_pos, mask=m)
    tl.store(tape_len_ptr + rows, tape_len + writes.to(tl.int32), mask=m)
    tl.store(n_tokens_ptr + rows, n_tokens, mask=m)
    tl.store(n_model_ptr + rows, n_model, mask=m)
    tl.store(format_errors_ptr + rows, format_errors, mask=m)
    tl.store(ans_at_ptr + rows, ans_at, mask=m)
    tl.store(diverged_at_ptr + rows, diverged_at, mask=m)
    tl.store(exit_ptr + rows, exit_code.to(tl.int8), mask=m)
    tl.store(after_ans_ptr + rows, after_ans.to(tl.int8), mask=m)


def advance(rows, sampled, block: int = 256, scan: int = 1024) -> None:
    """One step of every row of `rows` (a TensorRows), in place: `sampled` (B,) the model's ids."""
    r = rows
    search = r.tool == SEARCH
    _advance[(r.B,) if search else (triton.cdiv(r.B, block),)](
        sampled, r.feed, r.n_feed, r.tape, r.obs, r.expected, r.log, r.pos, r.pointer_of, r.move_of, r.arg, r.line, r.calls,
        *r.ints, *r.flags,
        r.B, r.tape.shape[1], r.obs.shape[1], r.expected.shape[1], r.log.shape[1],
        TOOL=r.tool, P=r.n_pointers, PAIR=r.pairs, BLOCK=1 if search else block, SCAN=scan, CALLS=r.calls.shape[1],
        ANS=ANS, EDGE=EDGE, END=END, EOS=EOS, ERR=ERR, FIND=FIND, OBS_END=OBS_END, PAD=PAD,
    )
