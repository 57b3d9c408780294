"""Code that ftlab grade runs *inside the learner's kernel*. Never imported there: the runner sends
this file's source in a cell of its own (`cell_source`), executed in a private namespace, so neither
what the learner's cells did to modules nor names they defined (`len = 3`, `def isinstance(...)`)
can change it.

Two steps, each one cell the learner never sees (not in the notebook, not in the kernel's history):

- `_ftlab_before(...)`, before the learner's first cell: keep the original builtins (in a module
  with an unguessable name), seed `random`/numpy, and make the learner's own `grader.check(...)`
  calls quiet no-ops (otter's grading mode; the tests are not there yet anyway).
- `_ftlab_checkpoint(...)`, in place of each `grader.check("q")` cell: fork a process that keeps
  the state of that moment and waits; after the last cell it runs q's test against that state
  (otter grades a question where its check cell is; the tests did not exist until then).
- `_ftlab_grade(...)`, after the learner's last cell (the test files have just been written): the
  tests of questions that had no check cell, against the final state.
Both run tests through `_ftlab_run_tests`: put back builtins, import hooks and the order of sys.path
the learner changed; drop otter (and doctest) from sys.modules so the tests run with freshly imported
code; import ftlab from the grader's own files (a finder first on sys.meta_path), and if sys.modules
holds ftlab modules that are not those files' (a stand-in, a changed package attribute) or a learner
changed an ftlab function, re-import ftlab while keeping the learner's objects' classes (with their
original methods); make every value the tests use plain (the learner's own subclasses of int, float,
str, containers, numpy arrays and torch tensors become plain values of the base type, through the base
type's own methods; an object lying about its type is refused; the learner's functions return plain
values); run each test file against the learner's names (names that shadow builtins left out), under
a time limit.

What it cannot stop: a function of the learner's that a test calls runs inside this same process
and could, with effort, reach into it (frames, gc). Hidden tests are what makes that impractical:
the learner cannot see what to fake. Values inside objects other than containers and dataclasses
(a model's attributes), methods of the learner's objects and callable objects are not made plain.
See docs/grading.md.
"""
# ruff: noqa: E402 - every import is inside the functions: this source runs as a notebook cell


def cell_source(call: str) -> str:
    """A cell that runs `call` (e.g. "_ftlab_grade(...)") from this file's functions (and
    plain_values.py's), defined in a fresh namespace whose builtins are the builtins module (not the
    learner's globals)."""
    import pathlib

    here = pathlib.Path(__file__).parent  # this file and plain_values.py: one namespace
    source = "\n\n".join((here / name).read_text(encoding="utf-8") for name in ("in_kernel.py", "plain_values.py"))
    return ("import builtins as _ftlab_builtins\n"
            f"_ftlab_builtins.exec({source!r}, _ftlab_space := "
            "{'__builtins__': _ftlab_builtins, '__name__': 'ftlab_grade'})\n"
            f"_ftlab_space[{call.split('(')[0]!r}]({call.split('(', 1)[1]}\n"
            "del _ftlab_builtins, _ftlab_space\n")


def _ftlab_before(nonce, seed, quiet_otter, libraries=()):
    import builtins
    import linecache
    import random
    import sys
    import types

    vault = types.ModuleType("_ftlab_" + nonce)
    vault.builtins = dict(vars(builtins))
    vault.meta_path, vault.path_hooks, vault.path = list(sys.meta_path), list(sys.path_hooks), list(sys.path)
    vault.libraries = _ftlab_snapshot_libraries(libraries)
    sys.modules[vault.__name__] = vault
    # jsonschema (under nbformat, under otter) imports this optional package for the `iri` string
    # format, which no notebook uses; importing it takes 1.3 s of every submission's time
    sys.modules.setdefault("rfc3987_syntax", None)
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass
    if quiet_otter:
        try:
            import otter

            otter.Notebook.init_grading_mode("./no-tests-here")  # export and check_all do nothing
            otter.Notebook.check = lambda self, question, global_env=None: None
        except ImportError:
            pass
    for key in [k for k, entry in linecache.cache.items()
                if len(entry) > 2 and any(nonce in line for line in entry[2])]:
        del linecache.cache[key]  # this cell's source names the vault


def _ftlab_is_code(value):
    """Whether a library attribute is code (what a patch replaces), not data a library may rebind."""
    import types

    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type,
                              staticmethod, classmethod, property, types.MethodDescriptorType,
                              types.WrapperDescriptorType))


def _ftlab_library_function(value):
    """`_ftlab_function_of` for any library attribute (some answer every attribute lookup, or raise)."""
    import types

    if not isinstance(value, (types.FunctionType, staticmethod, classmethod, property)) and not callable(value):
        return None
    try:
        return _ftlab_function_of(value)
    except BaseException:  # noqa: BLE001 - a proxy object whose __getattr__ raises
        return None


def _ftlab_snapshot_libraries(libraries):
    """Before the learner's first cell: the code of the library modules the tests use (dotted names
    from the runner; their top-level packages are imported now): each module's functions and classes,
    each class's methods, and each function's code object, defaults and keyword defaults.
    `_ftlab_restore_libraries` puts back what changed."""
    import importlib
    import sys
    import types
    import warnings

    for name in libraries:  # every dotted name: a submodule imported later (sklearn.metrics) is covered too
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - not installed, or an attribute (math.isclose), not a module
            pass
    tops = {name.split(".")[0] for name in libraries}
    modules, functions = {}, {}

    def keep(value):
        for function in {value if isinstance(value, types.FunctionType) else None, _ftlab_library_function(value)}:
            if function is not None:
                functions[id(function)] = (function, function.__code__, function.__defaults__,
                                           function.__kwdefaults__)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated attributes warn when touched
        for key in libraries:
            module = sys.modules.get(key)
            if not isinstance(module, types.ModuleType):
                continue  # an attribute, not a module, or never imported
            space = {k: v for k, v in vars(module).items() if _ftlab_is_code(v)}
            classes = {}
            for attr, value in space.items():
                keep(value)
                if isinstance(value, type) and str(vars(value).get("__module__", "")).split(".")[0] in tops:
                    members = {k: v for k, v in vars(value).items() if _ftlab_is_code(v)}
                    classes[attr] = (value, members, frozenset(vars(value)))
                    for member in members.values():
                        keep(member)
            modules[key] = (module, space, classes, frozenset(vars(module)), type(module))
    return modules, list(functions.values())


def _ftlab_restore_libraries(vault, notes):
    """Put back the library code the notebook replaced, added to or changed in place (a patched pandas
    method, `math.isclose = lambda *a, **k: True`, a function's `__code__`), before the tests run."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated attributes warn when touched
        changed = _ftlab_put_back(*getattr(vault, "libraries", ({}, [])))
    if changed:
        shown = sorted(set(changed))
        notes.append("tampering: the notebook changed libraries the tests use; put back: " + ", ".join(shown[:8])
                     + (f" and {len(shown) - 8} more" if len(shown) > 8 else ""))


def _ftlab_put_back(modules, functions):
    import sys

    missing, changed = object(), []
    for key, (module, space, classes, names, kind) in modules.items():
        if sys.modules.get(key) is not module:  # a stand-in module in sys.modules: the tests import the real one
            sys.modules[key] = module
            changed.append(f"sys.modules[{key!r}]")
        if type(module) is not kind:  # `module.__class__ = ...` (a __getattribute__ that fakes attributes)
            module.__class__ = kind
            changed.append(f"{key}.__class__")
        current = vars(module)
        for attr, value in space.items():
            if current.get(attr, missing) is not value:
                current[attr] = value
                changed.append(f"{key}.{attr}")
        for attr in current.keys() - names:  # added since (libraries add lazily too: only the notebook's go)
            function = _ftlab_library_function(current[attr])
            if function is not None and function.__module__ in ("__main__", None):
                del current[attr]  # the notebook's own function put into a library
                changed.append(f"{key}.{attr}")
        for name, (cls, members, member_names) in classes.items():
            now = vars(cls)
            for attr, value in members.items():
                if now.get(attr, missing) is not value:
                    try:
                        setattr(cls, attr, value)
                        changed.append(f"{key}.{name}.{attr}")
                    except (TypeError, AttributeError):
                        pass
            for attr in now.keys() - member_names:
                function = _ftlab_library_function(now[attr])
                if function is not None and function.__module__ in ("__main__", None):
                    try:
                        delattr(cls, attr)
                        changed.append(f"{key}.{name}.{attr}")
                    except (TypeError, AttributeError):
                        pass
    for function, code, defaults, kwdefaults in functions:
        if function.__code__ is not code or function.__defaults__ is not defaults \
                or function.__kwdefaults__ is not kwdefaults:
            function.__code__, function.__defaults__, function.__kwdefaults__ = code, defaults, kwdefaults
            changed.append(f"{function.__module__}.{function.__qualname__}")
    return changed


def _ftlab_restore_interpreter(nonce, notes):
    """Builtins and import machinery as they were before the learner's first cell; sys.path as it
    was first, then what the notebook added, its own folder last, so a learner's `otter.py` (in its
    folder or in one it put first on sys.path) cannot stand in for the real otter."""
    import builtins
    import importlib
    import os
    import sys
    import types

    work = os.getcwd()
    local = [p for p in sys.path if p in ("", ".") or os.path.abspath(p).startswith(work)]
    vault = sys.modules.get("_ftlab_" + nonce)
    first = [p for p in (vault.path if vault is not None else []) if p not in local]
    sys.path[:] = first + [p for p in sys.path if p not in local and p not in first] + local
    if vault is None:
        notes.append("tampering: the grader's copy of the builtins was removed")
        return
    for hooks, original in ((sys.meta_path, vault.meta_path), (sys.path_hooks, vault.path_hooks)):
        mine = [h for h in hooks if h not in original and "__main__" in (
            getattr(h, "__module__", None), getattr(type(h), "__module__", None))]
        lost = [h for h in original if h not in hooks]
        if mine or lost:  # hooks libraries add on import are kept; the notebook's own go, lost ones return
            notes.append("tampering: the notebook changed the import machinery; restored")
            hooks[:] = [h for h in original] + [h for h in hooks if h not in original and h not in mine]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    _ftlab_restore_libraries(vault, notes)
    current = vars(builtins)
    restored = []
    for name, original in vault.builtins.items():
        if isinstance(original, (types.BuiltinFunctionType, type)) and current.get(name) is not original:
            current[name] = original
            restored.append(name)
    if restored:
        notes.append("tampering: builtins replaced by the notebook were put back: " + ", ".join(sorted(restored)))


def _ftlab_fresh_codes(module):
    """qualname -> code object, compiled now from the module's source file (None: no source)."""
    import types

    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    with open(path, encoding="utf-8") as handle:
        top = compile(handle.read(), path, "exec", dont_inherit=True)
    codes, stack = {}, [top]
    while stack:
        for const in stack.pop().co_consts:
            if isinstance(const, types.CodeType):
                codes[const.co_qualname] = const
                stack.append(const)
    return codes


def _ftlab_function_of(value):
    import types

    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        value = value.fget
    for _ in range(10):
        wrapped = getattr(value, "__wrapped__", None)
        if wrapped is None:
            break
        value = wrapped
    return value if isinstance(value, types.FunctionType) else None


def _ftlab_changed_functions():
    """Names of ftlab functions and methods whose code is not their source's (or that were replaced)."""
    import sys

    changed = []
    for name, module in sorted(sys.modules.items()):
        if module is None or not (name == "ftlab" or name.startswith("ftlab.")):
            continue
        codes = _ftlab_fresh_codes(module)
        if codes is None:
            continue
        for qualname, code in codes.items():
            parts = qualname.split(".")
            if "<" in qualname or len(parts) > 2:
                continue  # nested functions, lambdas, comprehensions: checked through their owner
            owner = vars(module) if len(parts) == 1 else vars(vars(module).get(parts[0], object))
            if parts[-1] not in owner:
                if len(parts) == 1 or isinstance(vars(module).get(parts[0]), type):
                    changed.append(f"{name}.{qualname} (deleted)")
                continue
            if not code.co_flags & 0x2:  # no CO_NEWLOCALS: a class body, the name must hold that class
                value = owner[parts[-1]]
                if not (isinstance(value, type) and value.__module__ == name and value.__qualname__ == qualname):
                    changed.append(f"{name}.{qualname}")
                continue
            function = _ftlab_function_of(owner[parts[-1]])
            if function is None or function.__code__ != code:
                changed.append(f"{name}.{qualname}")
        for attr, value in list(vars(module).items()):  # the notebook's own functions put into ftlab
            members = [(attr, value)]
            if isinstance(value, type) and value.__module__ == name:
                members += [(f"{attr}.{key}", member) for key, member in vars(value).items()]
            for label, member in members:
                function = _ftlab_function_of(member)
                if function is not None and function.__module__ in ("__main__", None):
                    changed.append(f"{name}.{label}")
    return sorted(set(changed))


class _FtlabOwnCopy:
    """A finder first on sys.meta_path while tests run: `ftlab` and its modules are imported from the
    grader's own files (`folder`), whatever sys.path, sys.modules or the notebook's folder hold."""

    def __init__(self, folder):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery
        import os

        if name != "ftlab" and not name.startswith("ftlab."):
            return None
        parts = name.split(".")
        where = os.path.dirname(self.folder) if len(parts) == 1 else os.path.join(self.folder, *parts[1:-1])
        return importlib.machinery.PathFinder.find_spec(name, [where])


def _ftlab_not_own_modules(folder):
    """ftlab's entries in sys.modules that are not the grader's own modules, each with why: a stand-in
    the notebook put there, a module loaded from another file, a package's __path__ or a submodule
    attribute changed (`ftlab.grading = fake`). [] when all are ftlab's own."""
    import os
    import sys
    import types

    wrong = []
    for name, module in sorted(list(sys.modules.items()), key=lambda item: item[0]):
        if name != "ftlab" and not name.startswith("ftlab."):
            continue
        where = os.path.join(folder, *name.split(".")[1:])
        if type(module) is not types.ModuleType:
            wrong.append(f"{name} (a {type(module).__name__}, not a module)")
            continue
        space = vars(module)
        file = space.get("__file__")
        package = isinstance(file, str) and os.path.basename(file) == "__init__.py"
        expected = os.path.join(where, "__init__.py") if package else where + ".py"
        if not isinstance(file, str) or os.path.realpath(file) != expected:
            wrong.append(f"{name} (from {file!r}, not ftlab's own file)")
            continue
        if not package:
            continue
        path = space.get("__path__")
        if not isinstance(path, list) or [os.path.realpath(str(p)) for p in path] != [where]:
            wrong.append(f"{name}.__path__ (changed to {path!r})")
        for attr, value in list(space.items()):
            sub = os.path.join(where, str(attr))
            if (os.path.isfile(sub + ".py") or os.path.isfile(os.path.join(sub, "__init__.py"))) \
                    and value is not sys.modules.get(f"{name}.{attr}"):
                wrong.append(f"{name}.{attr} (an attribute that is not the module {name}.{attr})")
    return wrong


def _ftlab_reimport():
    """Fresh ftlab modules; the classes of the learner's objects are kept, given their original members."""
    import importlib
    import sys
    import types

    old = {n: m for n, m in sys.modules.items() if n == "ftlab" or n.startswith("ftlab.")}
    for name in old:
        del sys.modules[name]
    fresh = {}
    for name in sorted(old, key=lambda n: n.count(".")):
        if type(old[name]) is not types.ModuleType or not isinstance(vars(old[name]).get("__file__"), str):
            continue  # a stand-in without a file: dropped; a test that imports it gets the grader's copy then
        try:  # through _FtlabOwnCopy: from the grader's files
            fresh[name] = importlib.import_module(name)
        except ImportError:  # a name the notebook made up (sys.modules["ftlab.x"] = ...): gone
            pass
    kept = {}
    skip = {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__slots__"}
    for name, module in fresh.items():
        before = vars(old[name]) if type(old[name]) is types.ModuleType else {}  # a stand-in keeps nothing
        for attr, new in list(vars(module).items()):
            was = before.get(attr)
            if not (isinstance(new, type) and new.__module__ == name and isinstance(was, type)
                    and was.__module__ == name and was.__qualname__ == new.__qualname__):
                continue
            for key in [k for k in vars(was) if k not in vars(new) and k not in skip]:
                try:
                    delattr(was, key)
                except (AttributeError, TypeError):
                    pass
            for key, member in vars(new).items():
                if key in skip or isinstance(member, (types.MemberDescriptorType, types.GetSetDescriptorType)):
                    continue
                try:
                    setattr(was, key, member)
                except (AttributeError, TypeError):
                    pass
            kept[new] = was
    for module in fresh.values():
        for attr, value in list(vars(module).items()):
            if isinstance(value, type) and value in kept:
                setattr(module, attr, kept[value])


def _ftlab_own_ftlab(folder, notes):
    """ftlab as the tests will import it is the grader's own copy: imported from `folder`; stand-ins
    in sys.modules and changed functions replaced by a fresh import (see _ftlab_reimport)."""
    import sys

    if not any(isinstance(h, _FtlabOwnCopy) for h in sys.meta_path):
        sys.meta_path.insert(0, _FtlabOwnCopy(folder))
    if not any(n == "ftlab" or n.startswith("ftlab.") for n in sys.modules):
        return  # the tests' first `import ftlab` goes through _FtlabOwnCopy
    not_own = _ftlab_not_own_modules(folder)
    if not_own:
        notes.append("tampering: sys.modules held ftlab modules that are not ftlab's own, imported again from "
                     "the grader's copy: " + ", ".join(not_own[:8]) + (" ..." if len(not_own) > 8 else ""))
        _ftlab_reimport()
    changed = _ftlab_changed_functions()
    if changed:
        notes.append("tampering: the notebook changed ftlab functions, restored from their source: "
                     + ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else ""))
        _ftlab_reimport()
    if not_own or changed:
        still = _ftlab_not_own_modules(folder) + _ftlab_changed_functions()
        if still:
            notes.append("ftlab could not be fully restored: " + ", ".join(still[:8]))


def _ftlab_run_tests(test_paths, learner, nonce, seconds, notes, grader):
    """Undo tampering, make the values the tests use plain, then run each test file against the
    learner's names, each under a time limit. `grader`: {"ftlab": ftlab's folder, "roots": the
    folders installed code lives in}, from the runner.

    Returns {question: [{"case": name, "passed": bool, "message": text}, ...]}, JSON-ready."""
    import builtins
    import re
    import signal
    import sys
    import time

    _ftlab_restore_interpreter(nonce, notes)
    for name in [n for n in sys.modules if n in ("otter", "doctest") or n.startswith("otter.")]:
        del sys.modules[name]
    _ftlab_own_ftlab(grader["ftlab"], notes)
    from otter.nbmeta_config import NBMetadataConfig
    from otter.test_files import TestCaseResult, create_test_file

    class TimeLimit(BaseException):  # not an Exception: a learner's `except Exception` cannot eat it
        pass

    def stop(signum, frame):
        raise TimeLimit(f"the test took longer than its {per_test:.0f} s")

    shadowing = set(vars(builtins))
    env = {k: v for k, v in learner.items() if k.startswith("__") or k not in shadowing}
    env["__builtins__"] = builtins
    used = set()  # the names the tests use: parameters, doctest code, env["..."] (any word of the files)
    for path in test_paths:
        with open(path, encoding="utf-8") as handle:
            used |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", handle.read()))
    _ftlab_make_plain(env, sorted(used & set(env) - {"__builtins__"}), notes, grader["roots"])
    deadline = time.monotonic() + seconds
    results = {}
    previous = signal.signal(signal.SIGALRM, stop)
    try:
        for index, path in enumerate(test_paths):
            per_test = max(1.0, (deadline - time.monotonic()) / (len(test_paths) - index))
            test = create_test_file(path, NBMetadataConfig())
            signal.setitimer(signal.ITIMER_REAL, per_test, 0.5)  # then every 0.5 s until it stops
            try:
                test.run(env)
            except BaseException as error:  # noqa: BLE001 - the test failed, whatever it raised
                message = f"❌ the test could not run: {type(error).__name__}: {error}"
                test.test_case_results = [TestCaseResult(test_case=case, message=message, passed=False)
                                          for case in test.test_cases]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            results[test.name] = [  # JSON-ready: the test case bodies (functions, for exception tests) stay here
                {"case": str(r.test_case.name), "passed": bool(r.passed), "message": str(r.message or "")[:20000]}
                for r in test.test_case_results]
    finally:
        signal.signal(signal.SIGALRM, previous)
    return results


def _ftlab_checkpoint(question, nonce, tests_dir, results_dir, grader_pid, give_up_after, grader):
    """At a `grader.check("q")` cell: fork a process that keeps this moment's state and waits. After
    the notebook's last cell the grader writes the tests and tests_dir/GO; the process then runs q's
    test against the state it kept (as otter grades a question where its check cell is)."""
    import json
    import os
    import signal
    import sys
    import time

    learner = sys._getframe(1).f_globals
    pid = os.fork()
    if pid:
        from IPython.display import display

        display({"application/vnd.ftlab.checkpoint+json": {"nonce": nonce, "pid": pid, "question": question}},
                raw=True)
        return
    try:  # the child: quiet, out of the kernel's way, waiting
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts go to the kernel's process group
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        sys.stdout = sys.stderr = open(os.devnull, "w")
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)  # OpenMP's pool does not survive fork
        go, give_up = os.path.join(tests_dir, "GO"), time.monotonic() + give_up_after
        while not os.path.exists(go):  # even if the kernel dies meanwhile: what was checked counts
            try:
                os.kill(grader_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
            if time.monotonic() > give_up:
                os._exit(0)
            time.sleep(0.05)
        with open(go) as handle:
            seconds = float(handle.read())
        notes = []
        try:
            results = _ftlab_run_tests([os.path.join(tests_dir, question + ".py")], learner, nonce, seconds, notes,
                                       grader)
            text = json.dumps({"nonce": nonce, "tests": results, "notes": notes})
        except BaseException as error:  # noqa: BLE001 - say why, rather than vanish
            text = json.dumps({"nonce": nonce, "tests": {}, "notes": notes, "error": f"{type(error).__name__}: {error}"})
        target = os.path.join(results_dir, f"{question}.{os.getpid()}.json")
        with open(target + ".tmp", "w") as handle:
            handle.write(text)
        os.replace(target + ".tmp", target)
    finally:
        os._exit(0)


def _ftlab_grade(test_paths, nonce, seconds, grader):
    """After the notebook's last cell: run the tests of questions that had no check cell, against
    the final state, and publish every result as one display output."""
    import sys

    from IPython.display import display

    notes = []
    learner = sys._getframe(1).f_globals  # called from the cell: the learner's names
    results = _ftlab_run_tests(test_paths, learner, nonce, seconds, notes, grader) if test_paths else {}
    display({"application/vnd.ftlab.grade+json": {"nonce": nonce, "tests": results, "notes": notes}}, raw=True)
