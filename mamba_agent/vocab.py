"""One vocabulary for every task: the 256 byte values, then named special tokens.

Token ids 0..255 are bytes (digits, letters, punctuation of task inputs, thoughts and outputs).
Special tokens follow at 256 and up. Pointer commands are single tokens (`[P1.read]`), as in the
paper; tools with arguments (`[FIND]`, `[VIEW]`, `[EDIT]`, `[RUN]`) take ordinary tokens closed
by `[END]` and answer with an observation closed by `[/OBS]`.

Changing this list changes what every checkpoint's ids mean: bump VOCAB_VERSION when you do.
"""

VOCAB_VERSION = 1
N_POINTERS = 4  # pointer command tokens exist for P1..P4; a task uses as many as it needs

SPECIAL_NAMES = (
    ["[PAD]", "[BOS]", "[EOS]", "[ANS]", "[EDGE]", "[ERR]"]
    + [f"[P{p}.{op}]" for p in range(1, N_POINTERS + 1) for op in ("read", "left", "right")]
    + ["[FIND]", "[VIEW]", "[EDIT]", "[RUN]", "[END]", "[/OBS]"]
)
SPECIAL = {name: 256 + i for i, name in enumerate(SPECIAL_NAMES)}
VOCAB_SIZE = 256 + len(SPECIAL_NAMES)  # 280, a multiple of 8

PAD, BOS, EOS, ANS = SPECIAL["[PAD]"], SPECIAL["[BOS]"], SPECIAL["[EOS]"], SPECIAL["[ANS]"]
EDGE = SPECIAL["[EDGE]"]  # what a read past either end of the tape answers
ERR = SPECIAL["[ERR]"]  # what a malformed or illegal command answers
FIND, VIEW, EDIT, RUN = SPECIAL["[FIND]"], SPECIAL["[VIEW]"], SPECIAL["[EDIT]"], SPECIAL["[RUN]"]
END, OBS_END = SPECIAL["[END]"], SPECIAL["[/OBS]"]


def pointer_command(pointer: int, op: str) -> int:
    """Token id of `[P{pointer}.{op}]`, op one of read, left, right (pointers count from 1)."""
    return SPECIAL[f"[P{pointer}.{op}]"]


def encode(text: str) -> list[int]:
    """Bytes of `text` as token ids (UTF-8); special tokens are never produced from text."""
    return list(text.encode("utf-8"))


def decode(ids, specials: bool = True) -> str:
    """Readable text: bytes decoded as UTF-8, special tokens by name (or dropped)."""
    out, run = [], bytearray()
    for i in ids:
        if i < 256:
            run.append(i)
            continue
        if run:
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
        if specials:
            out.append(SPECIAL_NAMES[i - 256] if i < VOCAB_SIZE else f"[?{i}]")
    if run:
        out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)
