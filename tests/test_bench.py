"""``rnnlab bench``: the CPU named from /proc/cpuinfo (vendor, numbers, microarchitecture, ISA), ``--threads all``
and the main job's size S5 (a one-round run), and the results it writes."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rnnlab.bench import SIZES, BenchConfig, cpu_info, cpu_label, format_table, thread_count
from rnnlab.cli import main
from rnnlab.errors import UserError
from rnnlab.kernels import _extension

# Two processor blocks each; only the first is read. Flags shortened to those that matter plus a few others.
AMD_MILAN_VM = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
microcode\t: 0x1000065
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: something else
"""

AMD_GENOA = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
stepping\t: 1
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16
"""

INTEL_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 8
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512vl amx_tile
"""


def cascade_lake(stepping: int) -> str:
    return INTEL_SPR.replace("143", "85").replace("stepping\t: 8", f"stepping\t: {stepping}")


def test_cpu_info_names_vendor_numbers_microarchitecture_and_isa():
    amd = cpu_info(AMD_MILAN_VM)
    assert amd == {"vendor": "AuthenticAMD", "model_name": "AMD EPYC", "family": 25, "model": 1, "stepping": 1,
                   "isa": ["avx", "avx2", "fma"], "microarchitecture": "Zen 3 (Milan)"}
    assert cpu_label(amd) == "AMD EPYC (AuthenticAMD family 25 model 1 stepping 1, Zen 3 (Milan); avx avx2 fma)"
    genoa = cpu_info(AMD_GENOA)
    assert genoa["microarchitecture"] == "Zen 4 (Genoa)"
    assert genoa["isa"] == ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"]
    intel = cpu_info(INTEL_SPR)
    assert (intel["vendor"], intel["family"], intel["model"], intel["stepping"]) == ("GenuineIntel", 6, 143, 8)
    assert intel["microarchitecture"] == "Sapphire Rapids" and "amx_tile" in intel["isa"]
    assert "GenuineIntel family 6 model 143 stepping 8, Sapphire Rapids" in cpu_label(intel)
    # one model number, three designs told apart by stepping
    assert [cpu_info(cascade_lake(s))["microarchitecture"] for s in (4, 7, 11)] == [
        "Skylake-SP", "Cascade Lake", "Cooper Lake"]


def test_an_unknown_cpu_is_named_by_its_numbers_not_guessed():
    info = cpu_info(AMD_MILAN_VM.replace("model\t\t: 1\n", "model\t\t: 99\n", 1))
    assert info["microarchitecture"] is None and info["model"] == 99
    assert cpu_label(info) == "AMD EPYC (AuthenticAMD family 25 model 99 stepping 1; avx avx2 fma)"
    empty = cpu_info("")
    assert empty["vendor"] is None and empty["family"] is None and empty["isa"] == []
    assert cpu_label(empty) == "unknown CPU (? family None model None stepping None; no AVX)"
    assert cpu_label("Intel(R) Xeon(R) Processor") == "Intel(R) Xeon(R) Processor"  # results of older versions


def test_threads_all_and_its_refusals():
    assert thread_count("all") == len(os.sched_getaffinity(0)) and thread_count(3) == 3
    BenchConfig(threads="all").validate()
    for bad in (0, "many", True):
        with pytest.raises(UserError, match=r"bench: threads must be an integer >= 1 or 'all', got "):
            BenchConfig(threads=bad).validate()
    with pytest.raises(SystemExit):  # argparse: "expected an integer or 'all'"
        main(["bench", "--threads", "many"])


def test_a_one_round_run_of_s5_with_every_core(tmp_path, capsys, monkeypatch):
    """The main job's layer (B=32, T=128, I=64, H=512) forward, one round; the JSON names the CPU and threads, the
    kernels' build and the RNNLAB_/MKL_/OMP_ environment, and so does the table's first line; the case's share of
    the GEMM peak needed for its target is recomputed from the JSON and found in the table."""
    assert SIZES["S5"].B == 32 and SIZES["S5"].T == 128 and SIZES["S5"].I == 64 and SIZES["S5"].H == 512
    monkeypatch.setenv("RNNLAB_BENCH_TEST_MARK", "on")  # read by nothing: it must only be recorded
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--cells", "lstm", "--sizes", "S5", "--passes", "fwd", "--rounds", "1", "--warmup",
                     "0", "--threads", "all", "--no-memory", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    assert results["config"]["threads"] == "all" and results["config"]["sizes"] == ["S5"]
    assert results["machine"]["threads"] == thread_count("all")
    assert results["machine"]["env"]["RNNLAB_BENCH_TEST_MARK"] == "on"
    assert all(k.startswith(("RNNLAB_", "MKL_", "OMP_")) for k in results["machine"]["env"])
    if results["machine"]["fused_compiled"]:
        assert results["machine"]["kernel_isa"] == _extension.isa_flags()[0]
    [case] = results["cases"]
    assert case["size"] == "S5" and case["shape"] == {"B": 32, "T": 128, "I": 64, "H": 512}
    assert case["ratio_wall"] > 0 and case["target"] > 0
    # the share of the GEMM peak rnnlab would need: the model's FLOPs in target x torch.nn's time, over the peak
    need = case["gflop"] / (case["target"] * case["torch"]["wall_s"]["median"]) / results["machine"]["gemm_peak_gflops"]
    assert case["target_gemm_fraction"] == pytest.approx(need, rel=1e-9)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert results["machine"]["cpu"] == cpu_info(text)
    table = capsys.readouterr().out
    assert cpu_label(cpu_info(text)) in table and "lstm  S5" in table
    assert format_table(results).splitlines()[0] in table
    assert "RNNLAB_BENCH_TEST_MARK=on" in format_table(results).splitlines()[0]
    fractions = f"/{100 * case['rnnlab']['gemm_fraction']:.0f}/{100 * need:.0f} "
    assert fractions in format_table(results).splitlines()[-2]


def test_peak_memory_subprocesses_take_threads_all(tmp_path):
    """The memory children rebuild the config from JSON, ``threads="all"`` included."""
    out = tmp_path / "mem.json"
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--cells", "rnn", "--sizes", "S4", "--passes", "fwdbwd", "--rounds", "1", "--warmup",
                     "0", "--threads", "all", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    [case] = json.loads(out.read_text())["cases"]
    assert case["torch"]["peak_bytes"] > 0 and case["rnnlab"]["peak_bytes"] > 0
