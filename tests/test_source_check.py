"""The source check: a fast 422 that says what and where (the jail, not this, is the boundary).

Each escape class that got past the first checker (issue 9) has a case here; so
do the limits (no source may give anything but a 422), honest cores in several
styles, and the process pool that keeps the check off the event loop.
"""

from __future__ import annotations

import asyncio
import pickle
import random
import textwrap

import neurons
import pytest

from flexsn_core import KernelSpec
from flexsn_service.builds.sandbox import SourceRejected as SandboxSourceRejected
from flexsn_service.builds.sandbox import check_source
from flexsn_service.builds.source_check import (
    ALLOWED_BUILTINS,
    CheckLimits,
    SourceRejected,
    check_source_text,
    default_allowlists,
)
from flexsn_service.builds.source_check_pool import CheckUnavailable, SourceCheckPool

COUNTS = {"num_inputs": 1, "num_states": 1, "num_static": 0}
DEFAULT_LIMITS = CheckLimits()


def _check(source: str, entry: str = "core", limits: CheckLimits = DEFAULT_LIMITS) -> None:
    check_source_text(textwrap.dedent(source), entry, COUNTS, default_allowlists(), limits)


def _rejected(source: str, limits: CheckLimits = DEFAULT_LIMITS) -> SourceRejected:
    with pytest.raises(SourceRejected) as info:
        _check(source, limits=limits)
    return info.value


# ------------------------------------------------------------ escape classes
ESCAPES = {
    # generator / coroutine / traceback / frame / code attributes
    "generator frame": ("def core(x, v):\n    g = (i for i in ())\n    g.gi_frame.f_back.f_globals\n    return x, v\n",
                        3, "'gi_frame'"),
    "generator code": ("def core(x, v):\n    c = (i for i in ()).gi_code\n    return x, v\n", 2, "'gi_code'"),
    "coroutine frame": ("def core(x, v):\n    f = x.cr_frame\n    return x, v\n", 2, "'cr_frame'"),
    "async generator frame": ("def core(x, v):\n    f = x.ag_frame\n    return x, v\n", 2, "'ag_frame'"),
    "traceback frame": ("def core(x, v):\n    f = x.tb_frame.f_builtins\n    return x, v\n", 2, "'tb_frame'"),
    "traceback next": ("def core(x, v):\n    f = x.tb_next\n    return x, v\n", 2, "'tb_next'"),
    "frame globals": ("def core(x, v):\n    g = x.f_globals['__builtins__']\n    return x, v\n", 2, "'f_globals'"),
    "frame locals": ("def core(x, v):\n    g = x.f_locals\n    return x, v\n", 2, "'f_locals'"),
    "frame code": ("def core(x, v):\n    g = x.f_code.co_consts\n    return x, v\n", 2, "'f_code'"),
    "code object": ("def h():\n    pass\n\ndef core(x, v):\n    h.co_code\n    return x, v\n", 5, "'co_code'"),
    "function globals": ("def h():\n    pass\n\ndef core(x, v):\n    h.__globals__\n    return x, v\n", 5, "dunder"),
    "exception traceback": ("def core(x, v):\n    try:\n        1 / 0\n    except ZeroDivisionError as e:\n"
                            "        e.__traceback__\n    return x, v\n", 2, "try statements"),
    # match: class patterns read attributes
    "match class pattern": ("import torch\n\ndef core(x, v):\n    match x:\n        case torch.Tensor(__class__=c):\n"
                            "            pass\n    return x, v\n", 4, "match statements"),
    "match value": ("def core(x, v):\n    match 1:\n        case 1:\n            pass\n    return x, v\n", 2, "match"),
    # module aliases
    "module alias at module level": ("import torch\nT = torch\n\ndef core(x, v):\n    return x, v\n", 2,
                                     "module 'torch' is used as a value"),
    "module alias in a function": ("import torch\n\ndef core(x, v):\n    T = torch\n    T.os.system('id')\n"
                                   "    return x, v\n", 4, "module 'torch' is used as a value"),
    "math alias": ("import math\n\ndef core(x, v):\n    m = math\n    return x, v\n", 4, "module 'math'"),
    "module as an argument": ("import math\n\ndef f(m):\n    return m\n\ndef core(x, v):\n    f(math)\n"
                              "    return x, v\n", 7, "module 'math'"),
    "module attribute that is a module": ("import torch\n\ndef core(x, v):\n    torch.nn.functional.torch\n"
                                          "    return x, v\n", 4, "'torch.nn.functional.torch'"),
    "from-import outside the allowlist": ("from torch.nn.functional import importlib\n\ndef core(x, v):\n"
                                          "    return x, v\n", 1, "'torch.nn.functional.importlib'"),
    "from-import of torch.load": ("from torch import load\n\ndef core(x, v):\n    return x, v\n", 1, "'torch.load'"),
    "submodule as a value": ("import torch\n\ndef core(x, v):\n    F = torch.nn.functional\n    return x, v\n", 4,
                             "module 'torch.nn.functional' is used as a value"),
    "variable named like a module": ("import torch\n\ndef core(x, torch):\n    return x, torch\n", 3,
                                     "'torch' names a module"),
    # str.format field access
    "str.format": ("def core(x, v):\n    s = '{0.__class__}'.format(x)\n    return x, v\n", 2, "'format'"),
    "str.format_map": ("def core(x, v):\n    s = '{a}'.format_map({'a': x})\n    return x, v\n", 2, "'format_map'"),
    "format()": ("def core(x, v):\n    s = format(x, '')\n    return x, v\n", 2, "'format'"),
    "str.format unbound": ("def core(x, v):\n    f = str.format\n    return x, v\n", 2, "'str'"),
    # default arguments run when the module loads
    "default calls": ("import torch\n\ndef core(x, v, w=torch.zeros(10 ** 10)):\n    return x, v\n", 3,
                      "default argument value must be a constant"),
    "default lambda": ("def core(x, v, w=lambda: 0):\n    return x, v\n", 1, "default argument value"),
    "lambda default smuggles a module": ("import torch\n\ndef core(x, v):\n    f = lambda t=torch: t\n"
                                         "    return x, v\n", 4, "module 'torch'"),
    "annotation runs code": ("import torch\n\ndef core(x: torch.zeros(3), v):\n    return x, v\n", 3, "annotations"),
    "decorator": ("def deco(f):\n    return f\n\n@deco\ndef core(x, v):\n    return x, v\n", 5, "decorators"),
    # lambdas and comprehensions reaching names
    "comprehension reaches getattr": ("def core(x, v):\n    g = [getattr for _ in (0,)][0]\n    return x, v\n", 2,
                                      "'getattr'"),
    "lambda reaches getattr": ("def core(x, v):\n    g = (lambda: getattr)()\n    return x, v\n", 2, "'getattr'"),
    "shadowed elsewhere": ("def a():\n    getattr = 1\n    return getattr\n\ndef core(x, v):\n"
                           "    return getattr(x, 'exp')(), v\n", 6, "'getattr'"),
    # getattr-likes and string-based attribute access
    "getattr": ("def core(x, v):\n    return getattr(x, 'exp')(), v\n", 2, "'getattr'"),
    "vars": ("def core(x, v):\n    vars(x)\n    return x, v\n", 2, "'vars'"),
    "type": ("def core(x, v):\n    type(x)\n    return x, v\n", 2, "'type'"),
    "globals": ("def core(x, v):\n    globals()\n    return x, v\n", 2, "'globals'"),
    "__import__": ("def core(x, v):\n    __import__('os')\n    return x, v\n", 2, "'__import__'"),
    "operator.attrgetter": ("import operator\n\ndef core(x, v):\n    return x, v\n", 1, "import of 'operator'"),
    "__getattribute__": ("def core(x, v):\n    x.__getattribute__('grad_fn')\n    return x, v\n", 2, "dunder"),
    "__dict__": ("import torch\n\ndef core(x, v):\n    torch.__dict__['load']\n    return x, v\n", 4, "dunder"),
    "f-string dunder": ("def core(x, v):\n    s = f'{x.__class__}'\n    return x, v\n", 2, "dunder"),
    # reaching outside the computation
    "tensor storage": ("def core(x, v):\n    return x.untyped_storage(), v\n", 2, "'untyped_storage'"),
    "tensor hook": ("import torch\n\ndef core(x, v):\n    torch.Tensor.register_hook\n    return x, v\n", 4,
                    "'register_hook'"),
    "open": ("def core(x, v):\n    open('/tmp/flexsn-pwned', 'w').write('x')\n    return x, v\n", 2, "'open'"),
    "attribute assignment": ("def core(x, v):\n    x.data = v\n    return x, v\n", 2, "assigning to an attribute"),
    "import in a function": ("def core(x, v):\n    import torch\n    return x, v\n", 2, "top of the source"),
    "class": ("class A:\n    pass\n\ndef core(x, v):\n    return x, v\n", 1, "module-level"),
    "with": ("def core(x, v):\n    with x:\n        pass\n    return x, v\n", 2, "with statements"),
    "yield": ("def core(x, v):\n    yield x\n", 2, "generators"),
    "undefined name": ("def core(x, v):\n    return foo(x), v\n", 2, "'foo' is not defined"),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escape_classes_get_a_422_that_says_what_and_where(case: str) -> None:
    source, line, words = ESCAPES[case]
    error = _rejected(source)
    assert error.line == line, (case, str(error))
    assert words in str(error), (case, str(error))
    assert str(error).startswith(f"line {line}: ")


def test_the_allowlists_hold_no_frame_code_or_format_attributes() -> None:
    allow = default_allowlists()
    forbidden = {"gi_frame", "gi_code", "cr_frame", "ag_frame", "tb_frame", "tb_next", "f_globals", "f_builtins",
                 "f_locals", "f_back", "f_code", "co_code", "co_consts", "format", "format_map", "mro", "system",
                 "storage", "untyped_storage", "numpy", "register_hook", "grad_fn", "apply_"}
    assert not forbidden & allow.value_attributes
    assert not {"load", "save", "from_file", "ops", "hub", "jit", "utils", "library"} & allow.members["torch"]
    assert not {"importlib", "torch", "warnings", "np", "math"} & allow.members["torch.nn.functional"]
    assert not {"getattr", "setattr", "open", "eval", "exec", "compile", "type", "vars", "format", "globals",
                "locals", "object", "super", "__import__", "breakpoint", "input"} & ALLOWED_BUILTINS


# ------------------------------------------------------------------- limits
def test_a_500_term_sum_is_a_clear_422() -> None:
    error = _rejected("def core(x, v):\n    return " + " + ".join(["x"] * 500) + ", v\n")
    assert "nested more than 100 levels" in str(error) and error.line == 2


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def core(x, v):\n    return (" + "-\n" * 50_000 + "x), v\n", "nested too deeply to parse"),
        ("def core(x, v):\n    return (" + "not\n" * 40_000 + "x), v\n", "nested too deeply to parse"),
        ("X = " + "[\n" * 5_000 + "]\n" * 5_000 + "def core(x, v):\n    return x, v\n", "too many nested"),
        ("def core(x, v):\n    return " + "abs(" * 150 + "x" + ")" * 150 + ", v\n", "nested more than"),
        ("def core(x, v):\n" + "".join("    " * (i + 1) + "if x:\n" for i in range(120)) + "    return x, v\n",
         "syntax error"),
        ("def core(x, v):\n    return x, v\x00\n", "null bytes"),
        ("X = '" + "a" * 5_000 + "'\ndef core(x, v):\n    return x, v\n", "the limit is 4000"),
        ("def core(x, v):\n    return x, v\n" + "#" * 10 + "\n" * 300_000, "bytes; the limit is 200000"),
        ("def core(x, v):\n    return x +\n", "syntax error"),
    ],
    ids=["unary-minus", "not", "lists", "calls", "indentation", "null", "long-line", "size", "syntax"],
)
def test_pathological_sources_get_a_422_never_a_crash(source: str, words: str) -> None:
    assert words in str(_rejected(source))


def test_node_count_limit() -> None:
    source = "X = (" + ",\n".join("1" for _ in range(3000)) + ")\ndef core(x, v):\n    return x, v\n"
    assert "syntax nodes" in str(_rejected(source, CheckLimits(max_nodes=2000)))
    _check(source)


def test_random_garbage_only_ever_raises_source_rejected() -> None:
    """Whatever the text, the check answers with SourceRejected (a 422), never another exception."""
    rng = random.Random(9)
    pieces = ["(", ")", "[", "]", "{", "}", "lambda", ":", "x", "torch", ".", "__class__", "def", "core", "\n",
              "    ", "match", "case", "if", "else", "+", "-", "*", "**", "not", ",", "=", "'", '"', "\\", "\x00",
              "yield", "await", "async", "import", "from", "global", "nonlocal", "f'{", "}'", "@", ";", "#"]
    for _ in range(400):
        source = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 300)))
        try:
            _check(source)
        except SourceRejected:
            pass


# ------------------------------------------------------------ honest cores
def test_every_test_neuron_passes() -> None:
    for model in neurons.MODELS.values():
        spec = KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                    num_static=len(model.statics))
        check_source(spec)


HONEST = {
    "spikingjelly style": '''
        import math
        import torch

        def heaviside(x: torch.Tensor):
            return (x >= 0).to(x)

        def sigmoid_surrogate(x: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
            """Heaviside forward, sigmoid gradient."""
            sg = torch.sigmoid(alpha * x)
            return sg + (heaviside(x) - sg).detach()

        def core(x: torch.Tensor, v: torch.Tensor, tau: float = 2.0, v_th: float = 1.0, v_reset=None):
            h = v + (x - v) / tau
            spike = sigmoid_surrogate(h - v_th)
            if v_reset is None:
                v = h - spike * v_th
            else:
                v = spike * v_reset + (1.0 - spike) * h
            return spike, v
        ''',
    "closure and loop": '''
        tau = 2.0
        DECAYS = (0.5, 0.25)

        def core(x, v):
            def step(h):
                return h / tau
            acc = v
            for i in range(2):
                acc = acc + step(x) * DECAYS[i]
            while False:
                break
            return acc, acc
        ''',
    "aliases capture writes": '''
        import math
        import torch
        import torch.nn.functional
        import torch.nn.functional as F
        from torch.nn import functional as Fn
        from torch import sigmoid as sig, float32

        NAN = float('nan')
        NEG_INF = float('-inf')
        TWO_PI = 2 * math.pi
        relu = torch.nn.functional.relu
        atan = torch.atan

        def helper(x):
            return F.leaky_relu(x, 0.1) + Fn.relu(x) + relu(x)

        alias = helper

        def core(x, v):
            eps = torch.finfo(x.dtype).eps
            y = torch.where(x > 0, x, v).to(float32) + eps + x.new_zeros(x.shape)
            z = torch.special.expit(y) + atan(y) * TWO_PI + x.dtype.is_floating_point
            s = [alias(x) for _ in range(2)][0] + sig(z)
            assert x.shape == v.shape, f"shapes {x.shape} and {v.shape} differ"
            return s, torch.clamp(v, min=-1.0, max=1.0)
        ''',
}


@pytest.mark.parametrize("case", sorted(HONEST))
def test_honest_cores_pass(case: str) -> None:
    _check(HONEST[case])


def test_arity_is_checked() -> None:
    assert "called with 2" in str(_rejected("def core(x, v, w):\n    return x, v\n"))
    assert "keyword-only" in str(_rejected("def core(x, v, *, scale):\n    return x, v\n"))
    assert "no top-level function 'core'" in str(_rejected("def other(x, v):\n    return x, v\n"))


def test_sandbox_keeps_its_names_and_errors_cross_processes() -> None:
    assert SandboxSourceRejected is SourceRejected
    error = pickle.loads(pickle.dumps(SourceRejected("use of 'open' is not allowed", 3)))
    assert isinstance(error, SourceRejected) and error.line == 3 and str(error) == "line 3: use of 'open' is not allowed"


# ---------------------------------------------------------------- the pool
def _spec(source: str) -> KernelSpec:
    return KernelSpec(source=textwrap.dedent(source), entry="core", num_inputs=1, num_states=1, num_outputs=1)


def test_the_pool_checks_in_another_process_and_recovers_from_a_stuck_check(monkeypatch) -> None:  # noqa: ANN001
    async def scenario() -> None:
        pool = SourceCheckPool(processes=1, timeout_s=20.0, queue_timeout_s=0.2)
        try:
            await pool.check(_spec(HONEST["closure and loop"]), max_bytes=200_000)
            with pytest.raises(SourceRejected, match="'getattr'"):
                await pool.check(_spec("def core(x, v):\n    return getattr(x, 'a'), v\n"), max_bytes=200_000)
            with pytest.raises(SourceRejected, match="bytes; the limit is 100"):
                await pool.check(_spec(HONEST["closure and loop"]), max_bytes=100)
            first = pool._pool
            # A check past its time limit kills the pool and is a 422; the next check gets a fresh pool.
            pool.timeout_s = 0.0
            with pytest.raises(SourceRejected, match="took longer than"):
                await pool.check(_spec(HONEST["closure and loop"]), max_bytes=200_000)
            assert pool._pool is None
            pool.timeout_s = 20.0
            await pool.check(_spec(HONEST["closure and loop"]), max_bytes=200_000)
            assert pool._pool is not first
            # Every process busy longer than the queue timeout: the service is busy (503), not the source wrong.
            await pool._slots.acquire()
            with pytest.raises(CheckUnavailable, match="busy"):
                await pool.check(_spec(HONEST["closure and loop"]), max_bytes=200_000)
            pool._slots.release()
        finally:
            await pool.close()

    asyncio.run(scenario())
