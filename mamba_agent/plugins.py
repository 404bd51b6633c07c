"""Plugins: tasks and policies defined outside mamba-agent, found by name.

A name given where a task or a policy kind is expected (`--task`, a task file's `task:`,
`--policy`, the names a checkpoint records) is looked up in this order:
  1. a built-in one (`addition`, `mamba`, ...);
  2. `module:Name`: `Name` from the importable module `module` (your own code on PYTHONPATH, or
     any installed package);
  3. an entry point of that name in the group `mamba_agent.tasks` or `mamba_agent.policies` of an
     installed package (its pyproject.toml: `[project.entry-points."mamba_agent.tasks"]`,
     `sort = "mamba_sort.task:Sort"`).
The object is then known by that name: a checkpoint records it and finds the plugin by it again.
Tools need no lookup: a task builds its own (`Task.tools`), from wherever it imports them.
What each kind must provide, and the invariants it must keep: docs/extending.md.
"""

import importlib
from importlib.metadata import entry_points

GROUPS = {"task": "mamba_agent.tasks", "policy": "mamba_agent.policies"}
_NOUNS = {"task": ("task", "tasks"), "policy": ("policy kind", "kinds")}


class PluginError(ValueError):
    """A plugin that cannot be imported or lacks the interface: the message names it and what is
    wrong, on one line."""


def installed(kind: str) -> dict[str, str]:
    """name -> `module:Name` of every installed plugin of `kind` ("task" or "policy")."""
    return {ep.name: ep.value for ep in entry_points(group=GROUPS[kind])}


def unknown(kind: str, name: str, builtin) -> str:
    """The error message for a name of `kind` that is neither built in nor installed."""
    noun, plural = _NOUNS[kind]
    plugins = sorted(installed(kind))
    listed = ", ".join(builtin) + (f"; installed plugins: {', '.join(plugins)}" if plugins else "")
    return f"unknown {noun} {name!r}; valid {plural}: {listed}; or module:Name for your own"


def load(kind: str, name: str, builtin) -> object:
    """The object that `name` (not a built-in one) refers to: imported from `module:Name`, or from
    the installed entry point called `name`.

    Raises:
        ValueError: no plugin of that name is installed (the message lists the valid names).
        PluginError: the plugin's module does not import, or has no such object.
    """
    reference = name if isinstance(name, str) and ":" in name else installed(kind).get(name)
    if reference is None:
        raise ValueError(unknown(kind, name, builtin))
    module, _, attribute = reference.partition(":")
    where = f"{kind} plugin {name!r}" + (f" ({reference})" if reference != name else "")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # whatever the plugin's own import raises, the user sees one line
        raise PluginError(f"{where}: cannot import {module} ({_why(e)})") from None
    for part in attribute.split(".") if attribute else ():
        if not hasattr(obj, part):
            raise PluginError(f"{where}: {module} has no {attribute!r}")
        obj = getattr(obj, part)
    if not attribute:
        raise PluginError(f"{where}: name the object too, as module:Name")
    return obj


def check_class(kind: str, name: str, obj, base: type) -> None:
    """PluginError unless `obj` is a subclass of `base` that defines all of base's abstract methods."""
    if not (isinstance(obj, type) and issubclass(obj, base)):
        what = obj.__qualname__ if hasattr(obj, "__qualname__") else f"a {type(obj).__name__}"
        raise PluginError(f"{kind} plugin {name!r}: {what} is not a subclass of {base.__module__}.{base.__qualname__}")
    if missing := sorted(obj.__abstractmethods__):
        raise PluginError(f"{kind} plugin {name!r}: {obj.__name__} does not define {', '.join(missing)}")


def _why(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
