"""Recording a meta-device construction and replaying it gives a normal seeded construction's values, bit for bit.

One process, no sharding: the replay hands each full tensor to a sink (FSDP copies a shard out of it).
The multi-process FSDP runs are in ``test_fsdp.py`` and ``test_fsdp_options.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from fabric.strategies._deferred_init import InitRecorder, replay_into


class GPTLike(nn.Module):
    """Blocks in a ModuleList; `_init_weights` with normal_(std=0.02) applied in `__init__`; a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(11, 6)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6)) for _ in range(2))
        self.register_buffer("mask", torch.tril(torch.ones(4, 4)))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


class ViTLike(nn.Module):
    """Init functions PyTorch skips on meta tensors: trunc_normal_, orthogonal_, sparse_, dirac_."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 7))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 4)
        self.conv = nn.Conv1d(3, 3, 1)
        nn.init.orthogonal_(self.a.weight, gain=0.5)
        nn.init.sparse_(self.b.weight, sparsity=0.3)
        nn.init.dirac_(self.conv.weight)
        self.b.weight.data.mul_(2.0)  # an in-place op through `.data` is recorded too


def _record_and_replay(cls: type[nn.Module], seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    with torch.device("meta"), InitRecorder(torch.device("cpu")) as recorder:
        model = cls()
    assert all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    drawn_after = torch.rand(3)
    torch.rand(5)  # draws before the replay must not change the values
    names = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
    values: dict[str, torch.Tensor] = {}
    replay_into(
        recorder.log, torch.device("cpu"), names, lambda name, full: values.__setitem__(name, full.clone())
    )
    return values, drawn_after


def _reference(cls: type[nn.Module], seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    model = cls()
    drawn_after = torch.rand(3)
    return {n: t.detach() for n, t in (*model.named_parameters(), *model.named_buffers())}, drawn_after


def test_gpt_like_init_is_reproduced_exactly() -> None:
    values, after = _record_and_replay(GPTLike, seed=4)
    expected, expected_after = _reference(GPTLike, seed=4)
    assert values.keys() == expected.keys()
    assert all(torch.equal(values[k], expected[k]) for k in values)
    assert torch.equal(after, expected_after)  # the generator continues where a normal construction leaves it


def test_init_functions_skipped_on_meta_are_replayed() -> None:
    values, after = _record_and_replay(ViTLike, seed=9)
    expected, expected_after = _reference(ViTLike, seed=9)
    assert values.keys() == expected.keys()
    assert all(torch.equal(values[k], expected[k]) for k in values)
    assert torch.equal(after, expected_after)
    assert not torch.equal(values["pos"], torch.zeros(1, 7))


def test_replay_leaves_the_callers_generator_alone() -> None:
    torch.manual_seed(1)
    with torch.device("meta"), InitRecorder(torch.device("cpu")) as recorder:
        model = GPTLike()
    torch.manual_seed(77)
    state = torch.get_rng_state()
    replay_into(recorder.log, torch.device("cpu"), {id(model.wte.weight): "w"}, lambda name, full: None)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_model_that_reinitializes_holds_one_parameter_at_a_time() -> None:
    """`reset_parameters` in each layer, then `_init_weights` over all: the first values are dead."""
    from fabric.strategies._deferred_init import replay

    torch.manual_seed(2)
    with torch.device("meta"), InitRecorder(torch.device("cpu")) as recorder:
        model = GPTLike()
    names = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
    values: dict[str, torch.Tensor] = {}
    stats: dict[str, int] = {}
    torch.set_rng_state(recorder.log.cpu_rng)
    replay(
        recorder.log, torch.device("cpu"), names, lambda n, full: values.__setitem__(n, full.clone()), stats
    )
    expected, _ = _reference(GPTLike, seed=2)
    assert all(torch.equal(values[k], expected[k]) for k in expected)
    largest = max(t.numel() for t in expected.values())
    total = sum(t.numel() for t in expected.values())
    assert stats["peak"] <= 2 * largest < total  # not the whole model at once


class Conv1DLike(nn.Module):
    """``transformers``' ``Conv1D`` layout: a bias that no operation touches after ``nn.Parameter``
    wraps it, and an initialization through ``param.data`` (a new object over the same memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(4, 6))
        self.bias = nn.Parameter(torch.zeros(6))
        self.weight.data.normal_(std=0.02)


def test_parameters_known_only_by_their_memory_are_replayed() -> None:
    from fabric.strategies._materialize import tensor_names as _tensor_names

    torch.manual_seed(3)
    with torch.device("meta"), InitRecorder(torch.device("cpu")) as recorder:
        model = Conv1DLike()
    assert recorder.log.covers([*model.parameters()])
    values: dict[str, torch.Tensor] = {}
    names = _tensor_names(model, recorder.log)
    replay_into(
        recorder.log, torch.device("cpu"), names, lambda name, full: values.__setitem__(name, full.clone())
    )
    expected, _ = _reference(Conv1DLike, seed=3)
    assert values.keys() == expected.keys()
    assert all(torch.equal(values[k], expected[k]) for k in values)


class _LibraryModel(nn.Module):
    """The ``transformers.PreTrainedModel`` protocol in miniature (the real models run in tests/models,
    which need ``transformers``): ``post_init`` at the end of each model's ``__init__`` runs
    ``initialize_weights`` (each not yet initialized module through the owning model's ``_init_weights``),
    but not on the meta device, then ties the weights."""

    def post_init(self) -> None:
        if torch.empty(0).device.type != "meta":
            self.initialize_weights()
        self.tie_weights()

    def initialize_weights(self) -> None:
        def visit(module: nn.Module, owner: _LibraryModel) -> None:
            for child in module.children():
                visit(child, child if isinstance(child, _LibraryModel) else owner)
            if not getattr(module, "_is_hf_initialized", False):
                owner._init_weights(module)
                module._is_hf_initialized = True

        visit(self, self)

    def tie_weights(self) -> None:
        pass

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class _Body(_LibraryModel):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(11, 6)
        self.blocks = nn.ModuleList(nn.Linear(6, 6) for _ in range(2))
        self.post_init()


class _WithHead(_LibraryModel):
    """An inner model, then a head tied to its embedding (GPT-2's shape): on the meta device the tie
    exists before the recorded init; eagerly the head's init draws into its own, dropped tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _Body()
        self.head = nn.Linear(6, 11, bias=False)
        self.post_init()

    def tie_weights(self) -> None:
        self.head.weight = self.body.wte.weight


def test_a_library_init_skipped_on_meta_is_recorded_at_setup_in_eager_order() -> None:
    from fabric.strategies._deferred_init import record_library_init

    torch.manual_seed(3)
    eager = _WithHead()
    expected = {n: t.detach() for n, t in eager.named_parameters()}
    torch.manual_seed(3)
    with torch.device("meta"), InitRecorder(torch.device("cpu")) as recorder:
        model = _WithHead()
    assert record_library_init(model, recorder.log, torch.device("cpu")) == 2
    assert model.head.weight is model.body.wte.weight  # the tie is put back
    names = {id(t): n for n, t in model.named_parameters()}
    values: dict[str, torch.Tensor] = {}
    replay_into(recorder.log, torch.device("cpu"), names, lambda n, full: values.__setitem__(n, full.clone()))
    assert values.keys() == expected.keys()
    assert [k for k in values if not torch.equal(values[k], expected[k])] == []
    assert float(values["body.blocks.0.weight"].std()) < 0.05  # the library's std=0.02, not Linear's default


def test_a_model_without_the_library_protocol_is_left_alone() -> None:
    from fabric.strategies._deferred_init import record_library_init

    with torch.device("meta"), InitRecorder(torch.device("cpu")) as recorder:
        model = GPTLike()
    count = len(recorder.log.ops)
    assert record_library_init(model, recorder.log, torch.device("cpu")) == 0
    assert len(recorder.log.ops) == count
