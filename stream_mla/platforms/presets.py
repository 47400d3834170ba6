"""The platform presets of attention-schemes.md §10, plus h800-like and h200-like (same Hopper die).

Peak MAC/s, clock, total on-chip SRAM, DRAM GB/s and the pJ values follow the §10 table ("MB" = 1e6 B, "MiB" =
2**20 B, as the table writes them). Unlisted knobs (SRAM port width, RF depth, vector unit, links) are modelling
choices, marked below.

GPU-like parts are modelled as a few large clusters: Stream's wall time explodes past 16 compute cores, so an
H100's 132 SMs become 8 clusters (one per GPC, 16.5 SMs = 128×264 MACs each) and an H20 becomes 8 clusters of 64×128.
Each keeps the part's total peak MAC/s, DRAM bandwidth and on-chip memory (L2 split evenly over the clusters).
`mac_rate` gives the published dense peaks at other precisions (§10: "use the int8 peak where published").

Register files (modelling choice, calibrated by tests/test_calibration.py): every preset gives each PE 64 weight
words and 8 partial-sum words, so a large GEMM keeps its weights and partial sums in the PEs and reaches >= 90 % of
the peak MAC/s in both engines (with 1-word files ZigZag stalled about half of every large GEMM on the SRAM port:
0.47-0.50 of peak at 4096^3). On h100-like that is 4.3 MB of weight words per 16.5-SM cluster, an H100's
256 KB register file per SM. h20-like's SRAM port is as wide as h100-like's (32,768 bits/cycle), at least its
DRAM port (28,344), so one core can stream a GEMV at the DRAM rate.

Vector unit (the softmax, norms and elementwise work; modelling choice, derived): the GPU presets take the
published FP32 (non-tensor) rate, 67 TFLOP/s on the Hopper parts and 44 TFLOP/s on H20, as lanes x 2 (an FMA) x the
preset's clock, rounded down to a power of two: 16,384 lanes on both (the rates give 18,306 and 19,486; ZigZag unrolls
a power-of-two tile dim over the lanes, so lanes beyond one would sit idle on every op and overstate the rate). Until
stop 19 they had 2,048 and 1,024 lanes, a fraction of the parts' CUDA cores, which made the one vector core the
bottleneck of every fused softmax at B = 32 (V3 absorb L = 32k on h100-like: 1.517x the roofline, 1.029x now).

Links (modelling choice, derived): the link between two on-chip cores, and so between each matrix core and the vector
core, is as wide as a core's SRAM port: the path a TensorCore's VPU or an SM's CUDA cores read the matrix unit's
results over is on-chip memory, and Stream's own FuseMax example joins its array and vector cores by a shared memory,
not a link. Until stop 22 they were 1,024 (edge-npu), 4,096 (cloud-fusemax, tpu-v5e-like: 768 GB/s on tpu-v5e-like,
less than its HBM) and 8,192 bits/cycle (GPU presets), and on tpu-v5e-like they bound the fused attention core at
B = 32: Stream sends each probability tile to one matrix core over one link (V3 absorb B = 32 L = 4k: 1.182x the
core's own roofline; 1.013x with the SRAM port's width).
"""

from stream_mla.platforms.spec import PlatformSpec

_COMMERCIAL_PJ = {"mac_pj": 0.3, "rf_pj_per_bit": 0.02, "sram_pj_per_bit": 0.3, "dram_pj_per_bit": 4.0}  # (A)
_RF = {"rf_weight_words": 64, "rf_output_words": 8}  # PE register files deep enough for a GEMM's peak (see above)
# Hopper SXM5 (H100, H800, H200): 132 SMs x 2,048 MACs @ 1.83 GHz = 989.4 TFLOP/s dense bf16, 50 MB L2 -> 8 clusters
# of 16.5 SMs (128x264 MACs, 6.25 MB each).
_HOPPER = {
    "clock_ghz": 1.83,
    "cores": 8,
    "rows": 128,
    "cols": 264,
    "sram_bytes": 50 * 10**6 // 8,
    "sram_bits_per_cycle": 32768,
    "vector_lanes": 16384,  # 67 TFLOP/s FP32 / (2 x 1.83 GHz) = 18,306, to a power of two (see above)
    "vector_pj_per_op": 0.5,
    "mac_rate": {"fp8": 2, "int8": 2},  # 1,979 TFLOP/s fp8 and TOP/s int8 dense (datasheet)
    **_RF,
    **_COMMERCIAL_PJ,
}


def _sram_links(p: PlatformSpec) -> PlatformSpec:
    """The preset with its on-chip links as wide as a core's SRAM port (see the module docstring)."""
    return p.model_copy(update={"link_bits_per_cycle": p.sram_bits_per_cycle})


PRESETS: dict[str, PlatformSpec] = {
    p.name: _sram_links(p)
    for p in (
        # FLAT/ZigZag-LLM edge template: 32×32 @ 250 MHz, 2 MB buffer, 8 GB/s at 25 pJ/bit (template fields).
        PlatformSpec(
            name="edge-npu",
            clock_ghz=0.25,
            cores=1,
            rows=32,
            cols=32,
            mac_pj=1.5,
            sram_bytes=2 * 10**6,
            sram_bits_per_cycle=2048,
            sram_pj_per_bit=1.0,
            rf_pj_per_bit=0.025,
            vector_lanes=32,
            vector_pj_per_op=1.5,
            dram_gb_s=8,
            dram_pj_per_bit=25.0,
            **_RF,
        ),
        # FLAT/FuseMax cloud accelerator: 256×256 @ 940 MHz, 32 MB at 8 TB/s (= 68,085 bits/cycle), 400 GB/s.
        PlatformSpec(
            name="cloud-fusemax",
            clock_ghz=0.94,
            cores=1,
            rows=256,
            cols=256,
            mac_pj=1.5,
            sram_bytes=32 * 10**6,
            sram_bits_per_cycle=68085,
            sram_pj_per_bit=1.0,
            rf_pj_per_bit=0.025,
            vector_lanes=256,
            vector_pj_per_op=1.5,
            dram_gb_s=400,
            dram_pj_per_bit=10.0,
            **_RF,
        ),
        # TPU v5e: four 128×128 MXUs @ 1.5 GHz, 819 GB/s; 64 MiB on-chip (A) = 16 MiB per MXU core.
        PlatformSpec(
            name="tpu-v5e-like",
            clock_ghz=1.5,
            cores=4,
            rows=128,
            cols=128,
            sram_bytes=16 * 2**20,
            sram_bits_per_cycle=16384,
            vector_lanes=1024,
            vector_pj_per_op=0.5,
            mac_rate={"int8": 2},  # 393 TOP/s int8 (v5e documentation); no fp8
            dram_gb_s=819,
            **_RF,
            **_COMMERCIAL_PJ,
        ),
        # H100 SXM5: 132 SMs × 2,048 MACs @ 1.83 GHz = 989.4 TFLOP/s, 3.35 TB/s HBM3, 50 MB L2 -> 8 clusters.
        PlatformSpec(name="h100-like", dram_gb_s=3350, **_HOPPER),
        # H20: 148 TFLOP/s = 65,536 MACs (A) @ 1.129 GHz, 4.0 TB/s, 60 MB L2 -> 8 clusters.
        PlatformSpec(
            name="h20-like",
            clock_ghz=1.129,
            cores=8,
            rows=64,
            cols=128,
            sram_bytes=60 * 10**6 // 8,
            sram_bits_per_cycle=32768,  # was 16,384: below the DRAM port, so one core could not stream at DRAM rate
            vector_lanes=16384,  # 44 TFLOP/s FP32 / (2 x 1.129 GHz) = 19,486, to a power of two (see above)
            vector_pj_per_op=0.5,
            mac_rate={"fp8": 2, "int8": 2},  # 296 TFLOP/s fp8 / TOP/s int8 dense
            dram_gb_s=4000,
            **_RF,
            **_COMMERCIAL_PJ,
        ),
        # H800 SXM5: the H100's compute and memory system (989 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, 50 MB
        # L2); only NVLink is cut, which one chip does not see. FlashMLA's published numbers are on this part.
        PlatformSpec(name="h800-like", dram_gb_s=3350, **_HOPPER),
        # H200 SXM5: the H100 die (989 TFLOP/s dense bf16, 50 MB L2) with 141 GB HBM3e at 4.8 TB/s.
        PlatformSpec(name="h200-like", dram_gb_s=4800, **_HOPPER),
    )
}
