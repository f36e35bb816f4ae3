"""The sharded engines against their raw use: FSDP2, tensor parallel + FSDP2, sharded checkpoints (issue 23).

Each figure launches ``cases/sharded_program.py`` under ``torchrun`` (gloo on 127.0.0.1, a fresh port per
launch) and reads the JSON that rank 0 writes. Step figures host raw PyTorch, raw PyTorch again (the A/A
control) and fabric in the same processes, interleaved (``common.time_interleaved``); memory figures
launch one implementation per run, rotating the order from round to round. See ``sharded_program.py``
for what each implementation does.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from harness import (
    CONTROL,
    FABRIC,
    PYTHON,
    RAW,
    REPO_ROOT,
    Check,
    Row,
    Settings,
    Table,
    child_env,
    failure_reason,
    free_port,
    log,
    run,
)

PROGRAM = Path(__file__).with_name("sharded_program.py")
DEEPSPEED_PROGRAM = Path(__file__).with_name("deepspeed_program.py")
STEP_TARGET = 1.02
MEMORY_TARGET = 1.02
FSDP_VS_DDP_TARGET = 0.6
CHECKPOINT_TARGET = 1.05
ASYNC_BLOCKING_TARGET = 10.0  # % of a synchronous save
TIMEOUT = 1800.0


def _launch(
    settings: Settings,
    nprocs: int,
    mode: str,
    first: str,
    *rest: str,
    program: Path = PROGRAM,
    env: dict[str, str] | None = None,
) -> dict:
    """Run ``PROGRAM MODE FIRST OUT REST...`` under torchrun; its rank 0's JSON, or ``RuntimeError``."""
    out = settings.workdir / f"sharded-{free_port()}.json"
    port = free_port()
    command = [
        PYTHON, "-m", "torch.distributed.run", f"--nproc_per_node={nprocs}", "--master_addr=127.0.0.1",
        f"--master_port={port}", str(program), mode, first, str(out), *rest,
    ]  # fmt: skip
    # DeepSpeed compiles its ops on first use into TORCH_EXTENSIONS_DIR: the repository's own cache (as
    # `nox -s deepspeed` uses), not the shared ~/.cache, where another build's lock can stall a launch
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    accelerator = "cuda" if os.environ.get("BENCH_DEVICE") == "cuda" else "cpu"  # gpu.py sets it
    environment = child_env(DS_ACCELERATOR=accelerator, TORCH_EXTENSIONS_DIR=extensions, **(env or {}))
    if "MALLOC_MMAP_THRESHOLD_" not in (env or {}):  # rows without it must not inherit the runner's
        environment.pop("MALLOC_MMAP_THRESHOLD_", None)
    done = run(command, timeout=TIMEOUT, env=environment, cwd=settings.workdir)
    if done.returncode != 0 or done.timed_out or not out.exists():
        raise RuntimeError(failure_reason(done))
    return json.loads(out.read_text())


def _unavailable(rows: list[Row], reason: str) -> None:
    for row in rows:
        row.note = f"unavailable: {reason}"


def _step_table(settings: Settings, figure: str, title: str, description: str) -> Table:
    rows = {
        "raw": Row(RAW if figure == "fsdp" else "raw `parallelize_module` + `fully_shard`", short="raw"),
        "raw-again": Row(CONTROL, short="A/A"),
        "fabric": Row(FABRIC, target=STEP_TARGET, short="fabric"),
    }
    rounds, blocks = (1, 3) if settings.quick else (settings.ddp_rounds, 12)
    log(f"{figure}: {rounds} rounds of {blocks} interleaved blocks")
    try:
        result = _launch(settings, 2, "steps", figure, str(rounds), str(blocks))
    except RuntimeError as error:
        _unavailable(list(rows.values()), str(error))
        log(f"  {figure}: {error}")
    else:
        for key, samples in result["times"].items():
            for wall, cpu in samples:
                rows[key].samples.append(wall * 1e3)
                rows[key].cpu_samples.append(cpu * 1e3)
        description += f" {rounds} rounds of {blocks} blocks of {result['block_steps']} steps."
    return Table(title, "ms", list(rows.values()), description, chart_label=figure)


def _memory_table(settings: Settings) -> Table:
    keys = ("fsdp-raw", "fsdp-fabric", "ddp-raw", "ddp-fabric", "fsdp-raw+mmap")
    labels = {
        "fsdp-raw": "raw `fully_shard` (reference), model built on the meta device",
        "fsdp-raw+mmap": "raw `fully_shard`, the user setting `MALLOC_MMAP_THRESHOLD_=131072`",
        "fsdp-fabric": 'fabric `strategy="fsdp"`, `init_module(empty_init=True)`',
        "ddp-raw": "raw `DistributedDataParallel`",
        "ddp-fabric": 'fabric `strategy="ddp"`',
    }
    rows = {key: Row(labels[key], short=key) for key in keys}
    rows["fsdp-fabric"].target = MEMORY_TARGET
    steps: dict[str, list[float]] = {key: [] for key in keys}
    rounds = 1 if settings.quick else settings.memory_rounds
    for round_index in range(rounds):
        log(f"FSDP/DDP memory: round {round_index + 1}/{rounds}")
        for key in settings.rotation(keys, round_index):
            if rows[key].note:
                continue
            implementation, _, variable = key.partition("+")
            env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if variable else {}
            try:
                result = _launch(settings, 2, "memory", implementation, env=env)
            except RuntimeError as error:
                rows[key].note = f"unavailable: {error}"
                log(f"  memory {key}: {error}")
                continue
            rows[key].samples.append(result["growth_bytes"] / 2**20)
            steps[key].append(result["step_seconds"] * 1e3)
    fsdp, ddp = rows["fsdp-fabric"].median, rows["ddp-raw"].median
    ratio = fsdp / ddp if fsdp is not None and ddp else None
    rows["fsdp-fabric"].checks.append(Check("vs raw DDP", ratio, FSDP_VS_DDP_TARGET, unit="x"))
    for key, row in rows.items():
        row.extra = {
            "vs raw DDP": "" if ddp is None or row.median is None else f"{row.median / ddp:.2f}x",
            "step (ms, own launch)": f"{statistics.median(steps[key]):.0f}" if steps[key] else "n/a",
        }
    rows["fsdp-fabric"].extra["vs raw DDP"] = rows["fsdp-fabric"].checks[0].cell()
    return Table(
        "FSDP2 per-rank peak memory, 2 processes (gloo), glibc's default allocator settings",
        "MB",
        list(rows.values()),
        (
            f"Peak resident memory growth (ru_maxrss, the larger of the 2 ranks) from before the model exists "
            f"to after 7 AdamW steps of a {4 * 4}-block transformer stack, one implementation per launch, "
            f"median over {rounds} launches each, rotating order; no allocator variables set but in the last "
            f"row. Fabric's FSDP (on a CPU) fixes glibc's mmap threshold at setup (`fabric/utilities/"
            f"allocator.py`). Targets: fabric FSDP <= {MEMORY_TARGET}x raw FSDP; fabric FSDP <= "
            f"{FSDP_VS_DDP_TARGET}x raw DDP. The step column (median of steps 3-7, separate launches, so "
            f"only a coarse figure) shows what the allocator setting costs per step."
        ),
        extra_columns=["vs raw DDP", "step (ms, own launch)"],
        chart_label="FSDP memory",
    )


def _checkpoint_tables(settings: Settings) -> list[Table]:
    configurations = [(2, 20)] if settings.quick else [(2, 200), (4, 200), (2, 1000), (4, 1000)]
    # benchmarks/gpu.py: no more processes than GPUs (nccl refuses two ranks on one device)
    most = int(os.environ.get("BENCH_MAX_PROCS", "0")) or max(world for world, _ in configurations)
    configurations = [(world, size) for world, size in configurations if world <= most]
    rounds = 1 if settings.quick else 5
    tables = []
    for world, megabytes in configurations:
        save = {
            "raw": Row("raw `dcp.save(get_model_state_dict(model))`", short="raw save"),
            "raw-again": Row(CONTROL, short="A/A save"),
            "fabric": Row(
                "`fabric.save(dir, {'model': model})`", target=CHECKPOINT_TARGET, short="fabric save"
            ),
            "fabric-async": Row("`fabric.save(..., async_save=True)`: time the call blocks", short="async"),
            "fabric-checksums": Row(
                "of fabric's save: the CRC-32 of its bytes alone (taken while writing)", short="CRC"
            ),
        }
        load = {
            "raw": Row("raw `dcp.load` + `set_model_state_dict`", short="raw load"),
            "raw-again": Row(CONTROL, short="A/A load"),
            "fabric": Row(
                "`fabric.load(dir, {'model': model})`", target=CHECKPOINT_TARGET, short="fabric load"
            ),
            "fabric-verify": Row("of fabric's load: `verify_files` (CRC-32 pass) alone", short="verify pass"),
        }
        log(f"sharded checkpoint: {world} processes, {megabytes} MB, {rounds} rounds")
        directory = settings.workdir / f"sharded-checkpoints-{world}-{megabytes}"
        directory.mkdir(exist_ok=True)
        try:
            result = _launch(settings, world, "checkpoint", str(megabytes), str(rounds), str(directory))
        except RuntimeError as error:
            _unavailable([*save.values(), *load.values()], str(error))
            log(f"  sharded checkpoint: {error}")
        else:
            for verb, rows in (("save", save), ("load", load)):
                for key, samples in result["times"][verb].items():
                    rows[key].samples.extend(samples)
            blocking = save["fabric-async"].median
            sync = save["fabric"].median
            share = 100.0 * blocking / sync if blocking is not None and sync else None
            save["fabric-async"].checks.append(
                Check("blocks, % of a sync save", share, ASYNC_BLOCKING_TARGET)
            )
            save["fabric-async"].extra = {"blocks, % of sync": save["fabric-async"].checks[0].cell()}
        for verb, rows in (("save", save), ("load", load)):
            tables.append(
                Table(
                    f"Sharded checkpoint {verb}, FSDP2, {world} processes, {megabytes} MB state: against raw DCP",
                    "s",
                    list(rows.values()),
                    (
                        f"Median over {rounds} rounds, rotating order, all implementations in the same {world} "
                        f"processes; each operation timed between two barriers (the slowest rank), the page "
                        f"cache synced before each save. Fabric's rows include its manifest and checksums."
                    ),
                    extra_columns=["blocks, % of sync"] if verb == "save" else [],
                    chart_label=f"{verb} {world}p {megabytes}MB",
                )
            )
    return tables


def measure_fsdp(settings: Settings) -> list[Table]:
    steps = _step_table(
        settings,
        "fsdp",
        "FSDP2 step time, 2 processes (gloo): fabric against raw `fully_shard` with the same units",
        "A 4-block transformer stack (d_model 256, 4 heads, sequence 32, batch 4), each block a unit, "
        "AdamW, fp32; per-step wall time on rank 0 after an untimed barrier per block.",
    )
    return [steps, _memory_table(settings)]


def measure_tensor_parallel(settings: Settings) -> list[Table]:
    return [
        _step_table(
            settings,
            "tp",
            "Tensor parallel + FSDP2 step time, 2 processes (gloo): `ModelParallelStrategy` against raw "
            "`parallelize_module` + `fully_shard`",
            "4 MLP blocks (256 -> 1024 -> 256, `w1` column-wise, `w2` row-wise) on a (1, 2) mesh "
            "(data parallel x tensor parallel), each block an FSDP unit, the same parallelize function in "
            "both; AdamW, fp32.",
        )
    ]


def measure_checkpoints(settings: Settings) -> list[Table]:
    return _checkpoint_tables(settings)


#: what each DeepSpeed row runs: the program's mode and the environment it adds (allocator settings)
_DEEPSPEED_ROWS: dict[str, tuple[str, dict[str, str] | None]] = {
    "raw": ("raw", None),
    "raw-again": ("raw", None),
    "raw-mmap": ("raw", {"MALLOC_MMAP_THRESHOLD_": "131072"}),
    "fabric": ("fabric", None),
    "fabric-keep": ("fabric", {"FABRIC_KEEP_ALLOCATOR": "1"}),
    "fabric-defaults": ("fabric-defaults", None),
}


def measure_deepspeed(settings: Settings) -> list[Table]:
    """ZeRO-2 and ZeRO-3: fabric's ``DeepSpeedStrategy`` against ``deepspeed.initialize``, the same config.

    One implementation per launch (a DeepSpeed engine and its process-wide state stay in the process),
    raw twice (the A/A control), rotating the order from round to round.
    """
    rounds, steps = (1, 2) if settings.quick else (5, 10)
    tables = []
    ddp = Row("raw `DistributedDataParallel` (memory reference of figure 6)", short="ddp")
    for _ in range(rounds):
        try:
            ddp.samples.append(_launch(settings, 2, "memory", "ddp-raw")["growth_bytes"] / 2**20)
        except RuntimeError as error:
            ddp.note = f"unavailable: {error}"
    for stage in (2, 3):
        rows = {
            "raw": Row("`deepspeed.initialize(model, optimizer, config)`", short=f"raw ZeRO-{stage}"),
            "raw-again": Row(CONTROL, short="A/A"),
            "fabric": Row("fabric `DeepSpeedStrategy(config=...)`", target=STEP_TARGET, short="fabric"),
        }
        if stage == 3:
            # fabric sets glibc's mmap threshold on a CPU at ZeRO-3 (`return_large_blocks_to_system`): raw
            # with the same setting shows what that alone costs and saves, apart from the wrapper
            rows["raw-mmap"] = Row(
                "raw, with the glibc mmap threshold fabric sets (`MALLOC_MMAP_THRESHOLD_=131072`)",
                short="raw + mmap threshold",
            )
            # and fabric without it (its documented opt-out): the wrapper alone, on raw's allocator
            rows["fabric-keep"] = Row(
                "fabric `DeepSpeedStrategy(config=...)`, `FABRIC_KEEP_ALLOCATOR=1` (glibc's defaults, as raw)",
                target=STEP_TARGET,
                short="fabric, glibc defaults",
            )
            # no config: fabric's CPU sizes for ZeRO-3's buffers (not the same-config comparison)
            rows["fabric-defaults"] = Row(
                "fabric `DeepSpeedStrategy(stage=3)`, no config (fabric's defaults)", short="fabric defaults"
            )
        memory = {key: [] for key in rows}
        configs: dict[str, str] = {}
        for round_index in range(rounds):
            log(f"DeepSpeed ZeRO-{stage}: round {round_index + 1}/{rounds}")
            for key in settings.rotation(list(rows), round_index):
                if rows[key].note:
                    continue
                try:
                    result = _launch(
                        settings,
                        2,
                        _DEEPSPEED_ROWS[key][0],
                        str(stage),
                        str(steps),
                        program=DEEPSPEED_PROGRAM,
                        env=_DEEPSPEED_ROWS[key][1],
                    )
                except RuntimeError as error:
                    rows[key].note = f"unavailable: {error}"
                    log(f"  ZeRO-{stage} {key}: {error}")
                    continue
                rows[key].samples.append(result["step_seconds"] * 1e3)
                memory[key].append(result["growth_bytes"] / 2**20)
                if key != "fabric-defaults":  # its config differs on purpose
                    configs[key] = json.dumps(result["config"], sort_keys=True)
        raw_memory = statistics.median(memory["raw"]) if memory["raw"] else None
        for key, row in rows.items():
            value = statistics.median(memory[key]) if memory[key] else None
            ratio = value / raw_memory if value is not None and raw_memory else None
            versus_ddp = value / ddp.median if value is not None and ddp.median else None
            # the targets are fabric's: the same memory as raw with the same config, and (ZeRO-3, item 6)
            # at most 0.6x DDP's; the other rows show their ratios without a verdict
            if key == "fabric":
                row.checks.append(Check("peak memory vs raw", ratio, MEMORY_TARGET, unit="x"))
            if stage == 3 and key in ("fabric", "fabric-defaults"):
                row.checks.append(Check("peak memory vs DDP", versus_ddp, FSDP_VS_DDP_TARGET, unit="x"))
            row.extra = {
                "peak growth": "n/a" if value is None else f"{value:.0f} MB",
                "memory vs raw": row.checks[0].cell()
                if key == "fabric"
                else ("n/a" if ratio is None else f"{ratio:.2f}x"),
                "memory vs DDP": "n/a" if versus_ddp is None else f"{versus_ddp:.2f}x",
            }
        same = (
            ""
            if len(set(configs.values())) <= 1
            else " The engines' configs DIFFER: "
            + "; ".join(f"{key}: {text}" for key, text in configs.items())
        )
        tables.append(
            Table(
                f"DeepSpeed ZeRO-{stage}, 2 processes (gloo, DS_ACCELERATOR=cpu): fabric against raw "
                "`deepspeed.initialize`",
                "ms",
                list(rows.values()),
                (
                    f"The {4 * 4}-block transformer stack of the FSDP memory figure, AdamW, fp32; median step "
                    f"time over {steps} steps after 2 warm-up steps (rank 0, a barrier before each), one "
                    f"implementation per launch, {rounds} launches each, rotating order. Peak growth: "
                    f"ru_maxrss of the larger rank from before the model exists; raw DDP "
                    f"{'n/a' if ddp.median is None else f'{ddp.median:.0f} MB'} in the same run. Both get the "
                    f"config {json.dumps(_deepspeed_config(stage))}.{same}"
                    + (
                        " On a CPU at ZeRO-3 fabric fixes glibc's mmap threshold at 128 KiB "
                        "(`fabric/utilities/allocator.py`), which raw does not: the row 'raw, with the glibc "
                        "mmap threshold' gives raw that setting, the row `FABRIC_KEEP_ALLOCATOR=1` takes it from "
                        "fabric, so each pair differs in the wrapper alone (the memory targets stay on "
                        "fabric's default rows). Row 'fabric defaults': "
                        "`DeepSpeedStrategy(stage=3)` with no config, i.e. fabric's arguments and, on a CPU, its "
                        f"ZeRO-3 sizes {json.dumps(_cpu_zero3_sizes())}."
                        if stage == 3
                        else ""
                    )
                ),
                extra_columns=["peak growth", "memory vs raw", "memory vs DDP"],
                chart_label=f"ZeRO-{stage}",
            )
        )
    return tables


def _deepspeed_config(stage: int) -> dict:
    return {"zero_optimization": {"stage": stage}, "gradient_accumulation_steps": 1}


def _cpu_zero3_sizes() -> dict:
    from fabric.strategies.deepspeed_config import CPU_ZERO3_SIZES

    return CPU_ZERO3_SIZES
