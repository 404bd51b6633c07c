"""The system calls the isolating backends refuse: one list, two renderings.

bubblewrap loads `bpf_program()` (compiled by libseccomp through pyseccomp) with `--seccomp FD`;
docker gets the same rules as a seccomp profile (`docker_profile()`, which the engine compiles
with libseccomp). Everything not listed is allowed: like Flatpak's filter, this is a deny list
of what an ordinary program never needs and what kernel exploits usually start from.

Refused with EPERM: new namespaces (unshare, setns, clone with any CLONE_NEW* flag), the
keyrings (add_key, request_key, keyctl), io_uring, the mount family (old and new API),
pivot_root and chroot, bpf, perf_event_open, ptrace and the calls that read or write another
process's memory, userfaultfd, kernel modules and kexec, the clock, reboot and swap, quotactl,
acct, syslog, handles that bypass path checks (open_by_handle_at), NUMA memory policy, and
obsolete calls (uselib, ustat, sysfs, ...). Refused with ENOSYS: clone3, whose flags sit in
memory a filter cannot read, so libc falls back to clone, whose flags it can. System calls of
another ABI (32-bit x86, x32) kill the process (libseccomp's default for a foreign
architecture).
"""

from __future__ import annotations

import errno
import functools
import json
import os

DENIED = (
    "unshare", "setns",
    "add_key", "request_key", "keyctl",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "pivot_root", "chroot",
    "bpf", "perf_event_open", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "pidfd_getfd", "process_madvise", "userfaultfd",
    "init_module", "finit_module", "delete_module", "create_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load",
    "clock_adjtime", "clock_settime", "settimeofday", "stime", "adjtimex",
    "reboot", "swapon", "swapoff", "quotactl", "quotactl_fd", "acct", "syslog", "vhangup",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "fanotify_init",
    "mbind", "set_mempolicy", "get_mempolicy", "migrate_pages", "move_pages",
    "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vm86", "vm86old", "iopl", "ioperm",
)
"""Refused with EPERM whatever their arguments."""
NEW_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
"""clone is refused (EPERM) when its flags (argument 0 on x86-64 and arm64) hold any of these."""
ENOSYS = ("clone3",)


class SeccompUnavailable(RuntimeError):
    """libseccomp or its binding is missing; the message says how to install them."""


@functools.cache
def bpf_program() -> bytes:
    """The filter as a BPF program for the running architecture (what `bwrap --seccomp` reads).

    Raises:
        SeccompUnavailable: pyseccomp is not installed, or libseccomp cannot be loaded.
    """
    try:
        import pyseccomp as sc
    except ImportError as e:
        raise SeccompUnavailable("pyseccomp is not installed: pip install pyseccomp") from e
    except RuntimeError as e:  # pyseccomp raises this when it cannot find libseccomp
        raise SeccompUnavailable(f"libseccomp is missing ({e}): apt-get install libseccomp2") from e
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED:
        f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in NEW_NAMESPACE_FLAGS.values():
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for name in ENOSYS:
        f.add_rule(sc.ERRNO(errno.ENOSYS), name)
    with os.fdopen(os.memfd_create("mamba-agent-seccomp"), "w+b") as program:
        f.export_bpf(program)
        program.seek(0)
        return program.read()


@functools.cache
def docker_profile() -> str:
    """The same rules as a docker seccomp profile (JSON, for `security_opt=["seccomp=..."]`)."""
    rules = [{"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}]
    for flag in NEW_NAMESPACE_FLAGS.values():  # docker: value is the mask, valueTwo the datum
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
                      "args": [{"index": 0, "value": flag, "valueTwo": flag,
                                "op": "SCMP_CMP_MASKED_EQ"}]})
    rules.append({"names": list(ENOSYS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
