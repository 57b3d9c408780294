"""Code that ftlab grade runs inside the learner's kernel, part two: the values tests use made plain.

Sent with ftlab.grade.in_kernel's source in the same cell (`cell_source`), never imported there;
`_ftlab_run_tests` calls `_ftlab_make_plain(env, names, notes, roots)` before the tests run:

- a value of the notebook's own subclass of a value type (int, float, complex, str, bytes, tuple,
  list, dict, set, frozenset, numpy.ndarray, torch.Tensor) becomes the plain value of the base type,
  made by the base type's own C code (`int.__int__(x)`, never the subclass's `__int__`), found in
  containers, numpy object arrays and dataclass fields too (changed in place);
- what cannot be made plain is refused (an object whose `__class__` claims a value type, a subclass
  of a numpy scalar or of pandas' types, more than _FTLAB_MAX_VALUES values): the test sees a stand-in
  whose every use fails with the reason;
- the notebook's functions that tests call return plain values (or fail, saying what was refused);
- installed code's own subclasses (an IntEnum of the standard library, torch.nn.Parameter) are kept:
  a class is installed code's when found under its name in a module loaded from the interpreter's
  folders or ftlab's (`roots`, from the runner).

The reason column lists what was converted and what was refused.
"""
# ruff: noqa: E402 - every import is inside the functions: this source runs as a notebook cell

_FTLAB_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class written in Python (bool, numpy.float64 are C types)
_FTLAB_MAX_VALUES = 1_000_000  # values looked at per name; more is refused (hand in an array instead)
_FTLAB_EXACT = frozenset(map(id, (int, float, str, bool, bytes, complex, type(None))))


class _FtlabRefused(Exception):
    """A value the tests must not see: it is not what it says it is, and cannot be made so."""


class _FtlabRefusedValue:
    """Stands in for a refused value: comparing, converting or using it fails, saying why."""

    __slots__ = ("_why",)

    def __init__(self, why):
        object.__setattr__(self, "_why", why)

    def __repr__(self):
        return f"<refused by the grader: {object.__getattribute__(self, '_why')}>"

    def _fail(self, *args, **kwargs):
        raise AssertionError(object.__getattribute__(self, "_why"))

    __getattr__ = __call__ = __bool__ = __len__ = __iter__ = __getitem__ = __contains__ = __hash__ = _fail
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __float__ = __int__ = __index__ = __abs__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __neg__ = _fail


def _ftlab_value_kinds():
    """[(type, how a plain one is made from a subclass's value, or None: refused)] for the types whose
    values tests compare, builtins first; numpy's, torch's and pandas' when the notebook imported them.
    Each conversion is the base type's own C code (int.__int__), never a method the subclass redefined."""
    import sys
    import types

    kinds = [(int, int.__int__), (float, float.__float__), (complex, complex.__complex__), (str, str.__str__),
             (bytes, bytes.__bytes__), (bytearray, bytearray.copy),
             (tuple, lambda value: tuple.__getitem__(value, slice(None))), (list, list.copy),
             (dict, lambda value: dict(dict.items(value))), (set, set.copy), (frozenset, frozenset.copy)]
    numpy, torch, pandas = (sys.modules.get(name) for name in ("numpy", "torch", "pandas"))
    if isinstance(numpy, types.ModuleType) and isinstance(vars(numpy).get("ndarray"), type):
        kinds += [(numpy.ndarray, lambda value: numpy.ndarray.view(value, numpy.ndarray)), (numpy.generic, None)]
    if isinstance(torch, types.ModuleType) and isinstance(vars(torch).get("Tensor"), type):
        def plain_tensor(value):  # the subclass's __torch_function__ is not asked
            with torch._C.DisableTorchFunctionSubclass():
                return torch._C.TensorBase.as_subclass(value, torch.Tensor)

        kinds.append((torch.Tensor, plain_tensor))
    if isinstance(pandas, types.ModuleType):
        kinds += [(k, None) for k in (vars(pandas).get(n) for n in ("DataFrame", "Series", "Index"))
                  if isinstance(k, type)]
    return kinds


def _ftlab_installed(thing, roots):
    """Whether a class or function is installed code's own (numpy's, torch's, ftlab's...): found under
    its name in a module loaded from a file in `roots`, not the notebook's (its cells, its folder)."""
    import os
    import sys
    import types

    try:
        name = vars(thing).get("__module__") if isinstance(thing, type) else thing.__module__
        module = sys.modules.get(name) if isinstance(name, str) and name != "__main__" else None
        file = vars(module).get("__file__") if type(module) is types.ModuleType else None
        if not isinstance(file, str):
            return False
        file = os.path.realpath(file)
        if not any(file.startswith(root + os.sep) for root in roots):
            return False
        found = module
        for part in str(thing.__qualname__).split("."):
            found = vars(found).get(part)
        return found is thing
    except (TypeError, AttributeError):  # no __dict__ on the way: not found
        return False


def _ftlab_plain(value, state):
    """`value` with every value of the notebook's own subclasses of a value type in it made plain
    (containers and dataclasses are walked; lists, dicts, sets and dataclasses changed in place).
    Raises _FtlabRefused for what cannot be made plain."""
    kind = type(value)
    if id(kind) in _FTLAB_EXACT:  # the common case, at once (by identity: a metaclass may redefine ==)
        return value
    key = id(value)
    if key in state["seen"]:
        return state["seen"][key]
    state["left"] -= 1
    if state["left"] < 0:
        raise _FtlabRefused(f"it holds more than {_FTLAB_MAX_VALUES:,} values to check")
    state["seen"][key] = value  # a container holding itself: the walk stops there
    state["alive"].append(value)  # ids stay unique while the walk runs
    base, convert = next(((k, c) for k, c in state["kinds"] if issubclass(kind, k)), (None, None))
    if base is None:
        try:
            claimed = next((k for k, _ in state["kinds"] if isinstance(value, k)), None)
        except Exception as error:  # noqa: BLE001 - its __class__ raised
            raise _FtlabRefused(f"a {kind.__name__} whose __class__ raised {type(error).__name__}") from None
        if claimed is not None:  # a `__class__` that says float on something that is not one
            article = "an" if claimed.__name__[:1] in "aeiou" else "a"
            raise _FtlabRefused(f"a {kind.__name__} that claims to be {article} {claimed.__name__}")
        _ftlab_plain_fields(value, state)
        return value
    if kind is not base and kind.__flags__ & _FTLAB_HEAP_TYPE and not _ftlab_installed(kind, state["roots"]):
        if convert is None:
            raise _FtlabRefused(f"a {kind.__name__}, the notebook's own subclass of {base.__name__}")
        state["converted"].add(f"{kind.__name__} -> {base.__name__}")
        value = convert(value)
        state["seen"][key] = value
    _ftlab_plain_items(value, state)
    if isinstance(value, (tuple, frozenset)):
        items = tuple.__getitem__(value, slice(None)) if isinstance(value, tuple) else tuple(frozenset.__iter__(value))
        plain = tuple(_ftlab_plain(item, state) for item in items)
        if any(a is not b for a, b in zip(items, plain)):
            value = plain if isinstance(value, tuple) else frozenset(plain)
    state["seen"][key] = value
    return value


def _ftlab_plain_items(value, state):
    """The items of a list, dict, set or object array made plain, in place."""
    if isinstance(value, list):
        for index, item in enumerate(list.copy(value)):
            plain = _ftlab_plain(item, state)
            if plain is not item:
                list.__setitem__(value, index, plain)
    elif isinstance(value, dict):
        items = list(dict.items(value))
        plain = [(_ftlab_plain(k, state), _ftlab_plain(v, state)) for k, v in items]
        if any(a is not c or b is not d for (a, b), (c, d) in zip(items, plain)):
            dict.clear(value)
            for k, v in plain:
                dict.__setitem__(value, k, v)
    elif isinstance(value, set):
        items = list(set.__iter__(value))
        plain = [_ftlab_plain(item, state) for item in items]
        if any(a is not b for a, b in zip(items, plain)):
            set.clear(value)
            set.update(value, plain)
    elif state["array"] is not None and isinstance(value, state["array"]) and value.dtype.kind == "O":
        flat = value.reshape(-1)  # numpy object array: its items are Python objects
        for index in range(flat.size):
            item = flat[index]
            plain = _ftlab_plain(item, state)
            if plain is not item:
                flat[index] = plain


def _ftlab_plain_fields(value, state):
    """A dataclass instance's fields (History's rows...) made plain, in place."""
    import dataclasses

    if isinstance(value, type) or not dataclasses.is_dataclass(value):
        return
    try:
        fields = object.__getattribute__(value, "__dict__")
    except AttributeError:  # slots: not walked
        return
    for name, item in list(dict.items(fields)):
        plain = _ftlab_plain(item, state)
        if plain is not item:
            dict.__setitem__(fields, name, plain)


def _ftlab_plain_or_refused(value, kinds, roots):
    """(plain value, conversions made) or raises _FtlabRefused."""
    array = next((k for k, _ in kinds if k.__name__ == "ndarray" and k.__module__ == "numpy"), None)
    state = {"kinds": kinds, "roots": roots, "array": array, "seen": {}, "alive": [], "converted": set(),
             "left": _FTLAB_MAX_VALUES}
    return _ftlab_plain(value, state), sorted(state["converted"])


def _ftlab_plain_returns(function, name, kinds, roots, notes):
    """`function` (the notebook's), returning plain values: a test calling it gets what it returned,
    made plain, or an AssertionError saying why it was refused."""
    import functools

    @functools.wraps(function)
    def plain_call(*args, **kwargs):
        result = function(*args, **kwargs)
        try:
            plain, converted = _ftlab_plain_or_refused(result, kinds, roots)
        except _FtlabRefused as why:
            note = f"values refused for the tests: what {name}() returned ({why})"
            if note not in notes:
                notes.append(note)
            raise AssertionError(f"{name}() returned {why}: the grader does not compare it") from None
        if converted:
            note = f"values handed to the tests as plain values: what {name}() returned ({', '.join(converted)})"
            if note not in notes:
                notes.append(note)
        return plain

    return plain_call


def _ftlab_make_plain(env, names, notes, roots):
    """Before the tests: each of `names` in `env` holds plain values. The notebook's own subclasses of
    int, float, str... (and numpy arrays, torch tensors) become plain values of their base type, found
    in containers and dataclasses too; what cannot (a class lying about its type, a pandas subclass)
    is refused: the test sees a stand-in that fails, and the reason says why. The notebook's functions
    return plain values the same way."""
    import types

    kinds = _ftlab_value_kinds()
    converted, refused = [], []
    for name in names:
        value = env[name]
        if type(value) is types.FunctionType and not _ftlab_installed(value, roots):
            env[name] = _ftlab_plain_returns(value, name, kinds, roots, notes)
            continue
        try:
            env[name], made = _ftlab_plain_or_refused(value, kinds, roots)
        except _FtlabRefused as why:
            env[name] = _FtlabRefusedValue(f"{name} was refused by the grader: {why}")
            refused.append(f"{name} ({why})")
            continue
        if made:
            converted.append(f"{name} ({', '.join(made)})")
    if converted:
        notes.append("values handed to the tests as plain values: " + ", ".join(converted))
    if refused:
        notes.append("values refused for the tests: " + ", ".join(refused))
