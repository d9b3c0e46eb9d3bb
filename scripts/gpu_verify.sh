#!/usr/bin/env bash
# GPU verification in one device call. Logs and results go to ${OUT:-gpu-out}/ (at most 8 files).
#   bash scripts/gpu_verify.sh tests    GPU tests (the fast-path subset), VAE and DiT benches, warm start
#                                       through real processes (turbovid bench --skip-stages, 2-layer umT5)
#   bash scripts/gpu_verify.sh bench    turbovid bench: per stage and whole job (full umT5-XXL)
#   bash scripts/gpu_verify.sh one      one short call: turbovid bench (2-layer umT5), then GPU tests
#   bash scripts/gpu_verify.sh x2       two GPUs (nvidia-h200-x2), ~8 min: GPU 0 turbovid bench (1.3B whole job,
#                                       in process and through real processes); GPU 1 the 1.3B/14B DiT kernel
#                                       profiles and the A14B 32 GB expert-offload bench; then both GPUs: the
#                                       14B 720p sequence-parallel bench (2 ranks vs 1)
#   bash scripts/gpu_verify.sh x2b|x2c  earlier x2 variants (A14B whole job, gpu_ranks.sh)
#   bash scripts/gpu_verify.sh x2d      two GPUs, ~8 min: session 15's unmeasured single-GPU changes (below)
#   bash scripts/gpu_verify.sh x2e      two GPUs, ~5 min: session 15's multi-GPU changes (int8 exchange, CFG)
#   bash scripts/gpu_verify.sh x2f      two GPUs, ~8 min: kernel profiles (1.3B DiT, VAE taps2d, 14B split forward)
#   bash scripts/gpu_verify.sh x2g      two GPUs, ~8 min: session 16's changes (VAE biases, top-k, x264 threads)
#   bash scripts/gpu_verify.sh x2h      two GPUs, ~5 min: the 14B sequence-parallel bench alone (int8 exchange)
#   bash scripts/gpu_verify.sh x2i      two GPUs, ~5 min: the 480p VAE, the quant pass by warps, the A14B whole job
#   bash scripts/gpu_verify.sh x2j      two GPUs, ~8 min: session 17's GPU tests, then the 14B sequence-parallel
#                                       bench with the pack-free bf16 exchange next to int8 (1 and 2 head groups)
#   bash scripts/gpu_verify.sh gemm     one GPU, ~3 min: the W8A8 GEMM's tile loop flattened / warp-specialized
#   bash scripts/gpu_verify.sh x2l      two GPUs, ~5 min: GPU 0 turbovid bench (ships the autotune choices with the
#                                       flattened GEMM configs); GPU 1 the W8A8 GPU tests, the 1.3B and 14B DiT
#   bash scripts/gpu_verify.sh a14b2    two GPUs, ~3 min: the A14B I2V whole job on 2 GPUs vs 1, bf16 (split encode)
#   bash scripts/gpu_verify.sh s18a     one GPU, ~4 min: VAE time taps merged on the output channels (micro-bench),
#                                       the 1.3B DiT and 480p VAE decode kernel profiles
#   bash scripts/gpu_verify.sh s18b     one GPU, ~5 min: the VAE's merged sub-pixel upsampler and taps2d frame groups
#                                       (GPU tests; 480p decode + encode and 720p decode by frames per conv; profile;
#                                       bench_vae --conv-frames and WanVAE.conv_frames were removed after s18c: no gain)
#   bash scripts/gpu_verify.sh s18c     one GPU, ~3 min: cuDNN's choice by frames per conv call (heuristic vs benchmark
#                                       mode) and the 480p decode / 720p decode in benchmark mode
#   bash scripts/gpu_verify.sh s18d     one GPU, ~7 min: CUDA graph + VAE GPU tests, the 1.3B DiT eager vs CUDA graph,
#                                       turbovid bench (whole job: graphs on by default, merged sub-pixel upsampler)
#   bash scripts/gpu_verify.sh s18e     one GPU, ~8 min: RGB head GEMM + gather (GPU tests; 480p/720p decode vs the cuDNN
#                                       head), turbovid bench (ships autotune choices), 14B DiT eager vs CUDA graph
#   bash scripts/gpu_verify.sh x2k      two GPUs, ~8 min: turbovid bench ‖ DiT benches and the quant pass; then the
#                                       A14B I2V whole job on 2 GPUs vs 1 (models.bench_a14b --ranks)
#   bash scripts/gpu_verify.sh s19a     one GPU, ~6 min: the implicit-GEMM VAE conv (kernels/conv3d_igemm.py): GPU tests,
#                                       its bench vs cuDNN taps, 480p decode + encode and 720p decode with igemm rows
#   bash scripts/gpu_verify.sh s19b     one GPU, ~9 min: turbovid bench with the igemm VAE default (ships autotune
#                                       choices), 480p / 720p decode rows by igemm width, the VAE and conv GPU tests
#   bash scripts/gpu_verify.sh s19c     one GPU, ~5 min: multi-row conv tiles: conv + VAE GPU tests, the conv bench,
#                                       480p / 720p decode rows by igemm width
#   bash scripts/gpu_verify.sh s19e     one GPU, ~8 min: turbovid bench (ships autotune choices), conv + VAE GPU tests,
#                                       480p / 720p decode rows by igemm width
#   bash scripts/gpu_verify.sh s20d     one GPU, ~8 min: the I2V encode with steady frames skipped (VAE encode GPU tests,
#                                       bench_vae --i2v at 480p / 720p), the A14B I2V 720p whole job (models.bench_a14b)
#   bash scripts/gpu_verify.sh s20e     one GPU, ~4 min: 192-wide igemm blocks tuned into the choices to ship
#                                       (scripts/vae_autotune_choices.py), decode rows by igemm width, the I2V encode
#   bash scripts/gpu_verify.sh s20f     one GPU, ~6 min: turbovid bench with session 20's defaults (+ stale-choice check)
#   bash scripts/gpu_verify.sh s21a     one GPU, ~6 min: decode by chunk size at 720p / 480p (+ 720p profile), the 1.3B
#                                       DiT kernel profile
#   bash scripts/gpu_verify.sh s21b     one GPU, ~5 min: the VAE attention as GEMMs + Triton softmax and the igemm chunk
#                                       sizing (VAE GPU tests, softmax kernel tests, 480p / 720p decode rows, profile)
#   bash scripts/gpu_verify.sh s21c     one GPU, ~9 min: 480p decode rows + profile (sub-pixel conv pads itself), the I2V
#                                       condition encode at 480p / 720p, turbovid bench with session 21's VAE
#   bash scripts/gpu_verify.sh s21d     one GPU, ~9 min: turbovid bench (decode chunks capped at 4 latents), the A14B I2V
#                                       720p whole job (resident and 32 GiB budget), the VAE decode GPU tests
#   bash scripts/gpu_verify.sh s21e     one GPU, ~5 min: the A14B I2V 720p whole job alone (resident and 32 GiB budget)
#   bash scripts/gpu_verify.sh s22a     one GPU, ~8 min (ran at eb7ae03; its residual epilogue was removed after: no gain): GPU tests,
#                                       micro-benches (vs the split forms, same run), the 1.3B and 14B DiT fused vs split
#   bash scripts/gpu_verify.sh s22b     one GPU, ~8 min: where the noise-frame encode tail comes from on this host (CPU
#                                       bench_tail: thread counts, frame threads, with and without a GIL-holding
#                                       decoder), then turbovid bench
#   bash scripts/gpu_verify.sh s22c     one GPU, ~6 min: frame threads by default: the real-looking-content tail sliced vs
#                                       frame threads (with and without a GIL-holding decoder), turbovid bench
#   bash scripts/gpu_verify.sh s22d     one GPU, ~9 min: no host syncs in the denoise loop (GPU test), turbovid bench,
#                                       the A14B I2V 720p whole job (resident and 32 GiB budget)
#   bash scripts/gpu_verify.sh s22e     one GPU, ~4 min: the encoder's frames built by one NumPy copy (without the GIL):
#                                       int8/encode tests on the GPU host, turbovid bench
#   bash scripts/gpu_verify.sh s23a     one GPU, ~6 min: the precompile's tests, the decode with/without the streamed
#                                       encoder (scripts/decode_contention.py), then two fresh worker starts through
#                                       real processes: without a kernel list, then with the list the first recorded
#   bash scripts/gpu_verify.sh s23b     one GPU, ~4 min: the precompile also builds the kernels' C launchers (GPU test),
#                                       the decode after an empty allocator cache or a GPU burn, a fresh start with
#                                       the shipped kernel list
#   bash scripts/gpu_verify.sh s23c     one GPU, ~2 min: the decode with the worker's lazily opened encoder, profiled
#   bash scripts/gpu_verify.sh s23d     one GPU, ~3 min: the decode inside a whole generation vs alone, profiled
#   bash scripts/gpu_verify.sh s23e     one GPU, ~8 min: the residual add folded into the next norm's pass: GPU tests,
#                                       bench_norms --residual, the 1.3B and 14B DiT fused vs split, turbovid bench
#                                       (its --logs: the autotune choices and kernel list to ship)
#   bash scripts/gpu_verify.sh s23f     one GPU, ~4.5 min: the fused kernel's GPU test, a fresh worker start with the
#                                       re-shipped files, the decode inside a job vs alone with SM clock and power
#   bash scripts/gpu_verify.sh s24a     one GPU, ~9 min: adaln's kernels share one stats/store helper (session 24), which
#                                       invalidated their shipped entries: adaln's GPU tests, turbovid bench (re-records
#                                       them; its --logs holds the files to ship), the in-job decode with the SM clock
#                                       and power read (nvidia-smi)
#   bash scripts/gpu_verify.sh s24b     one GPU, ~9 min: a fresh start with the re-shipped files, the fused residual+norm
#                                       kernel's every-config GPU test, the 14B DiT fused vs split
#   bash scripts/gpu_verify.sh s24c     one GPU, ~9 min: the 14B T2V worker's fresh start through real processes (warm-up at
#                                       480p and 720p), recording its own kernel list (the shipped 1.3B list set aside),
#                                       two 720p jobs; its --logs hold the 14B files to ship
#   bash scripts/gpu_verify.sh s24d     one GPU, ~5 min: fresh starts with the per-model shipped lists: the 14B worker
#                                       (480p + 720p warm-up, two 720p jobs), then the 1.3B worker (two jobs)
#   bash scripts/gpu_verify.sh s24e     one GPU, ~6 min: a fresh A14B I2V 720p start in process (scripts/warm_start_inprocess.py)
#                                       with no A14B list shipped: the 14B's list precompiles (same DiT); records the A14B's
#   bash scripts/gpu_verify.sh s24f     one GPU, ~5 min: fresh starts with the precompile's compiles in child processes vs
#                                       on threads only (precompile_in_processes), 1.3B and 14B, same host
#   bash scripts/gpu_verify.sh s25x2a   two GPUs, ~9 min, not run yet: issue 12's two-GPU numbers with today's kernels: the
#                                       14B 720p DiT on 2 ranks vs 1 (int8 exchange, sp14b), the A14B I2V 720p whole job
#                                       on 2 GPUs vs 1 (bf16 and int8 exchange)
#   bash scripts/gpu_verify.sh s25x2b   two GPUs, ~7 min, not run yet: the 14B worker through real processes at 720p with
#                                       `--worker-setting gpus=2` (one RQ consumer driving 2 ranks), then with 1 GPU
#   bash scripts/gpu_verify.sh s25b     one GPU, ~8 min: the A14B I2V 720p job through real processes within 32 GiB with
#                                       the memory plan sized from the checkpoint files (experts offloaded, the 2-layer
#                                       umT5 resident, smaller VAE chunks), then turbovid bench on the 1.3B (regression)
#   bash scripts/gpu_verify.sh s25c     one GPU, ~7 min: adaln's two kernels share one tile body: its GPU tests (every
#                                       config too), then the shipped choices and both models' kernel lists re-recorded
#                                       (1.3B 480p, then the 14B 720p starting from the 1.3B run's choices)
#   bash scripts/gpu_verify.sh s25d     one GPU, ~6 min: turbovid bench on the 1.3B with s25c's shipped files (fresh start
#                                       compiles nothing; the in-process part adds the baseline's bf16-out norm choices)
#   bash scripts/gpu_verify.sh s25e     one GPU, ~3 min: the 14B 720p worker's fresh start from the re-recorded list
#   bash scripts/gpu_verify.sh s26b     one GPU, ~6 min: turbovid bench on the 1.3B, then each job's wall-clock phases
#                                       from the worker's log (where POST -> completed goes beyond the stage timings)
#   bash scripts/gpu_verify.sh s26c     one GPU, ~6 min: the pipeline GPU tests, turbovid bench with the initial noise drawn
#                                       while the encoders run and the decode queued before the last step's report
#                                       (the wall-clock phases per job), the x264 noise tail by thread count
#   bash scripts/gpu_verify.sh s26d     one GPU, ~5 min: the pipeline GPU tests, then the whole job A/B on one host: the
#                                       tree at OLD_SRC and this one, alternately (turbovid bench, 4 jobs each)
#   bash scripts/gpu_verify.sh s27a     one GPU, ~7 min: the samplers' and pipeline GPU tests, then Nsight Compute (ncu) on
#                                       the VAE convs, the 1.3B GEMMs and one SageSLA call (scripts/ncu_targets.py)
#   bash scripts/gpu_verify.sh s27b     one GPU, ~8 min: scripts/tile_probe.py (the Gluon int8 GEMM vs the Triton one; VAE
#                                       conv tiles of 256 pixels)
#   bash scripts/gpu_verify.sh s27c     one GPU, ~9 min: the Gluon GEMM's GPU tests, the 1.3B DiT with it and without, the
#                                       1.3B worker recording the shipped choices and kernel list (files in $OUT/ship)
#   bash scripts/gpu_verify.sh s27d     one GPU, ~8 min: the 14B 720p worker recording (from the shipped 1.3B files), the
#                                       14B DiT with the Gluon GEMM and without
#   bash scripts/gpu_verify.sh s27e     one GPU, ~9 min: with the re-recorded shipped files: turbovid bench on the 1.3B, the
#                                       conv's GPU tests, the VAE decode alone (480p, 720p)
#   bash scripts/gpu_verify.sh s27f     one GPU, ~7 min: turbovid bench on the 1.3B with the shipped files (s27e, repaired)
#   bash scripts/gpu_verify.sh s27g     one GPU, ~4 min: the 1.3B DiT per NFE with the Triton int8 GEMM, then the Gluon one
#   bash scripts/gpu_verify.sh s28a     one GPU, ~7 min: the Gluon GEMM issuing the next tile's loads before the current
#                                       tile's epilogue, against OLD_SRC's: its GPU tests, tile_probe gemm, the 1.3B DiT
#                                       per NFE from both trees (CUDA graphs)
#   bash scripts/gpu_verify.sh s28b     one GPU, ~8 min: turbovid bench from OLD_SRC and this tree, alternately (fresh
#                                       start of this tree first: its re-hashed kernel list must precompile in full),
#                                       then the 14B DiT per NFE (CUDA graphs)
#   bash scripts/gpu_verify.sh s30a     one GPU, ~8 min (ran at 87169d7, when w8a8_ffn was auto|rowq): the block-scaled
#                                       int8 FFN (kernels/w8a8_blockq.py): a smoke launch, its GPU tests,
#                                       kernels.bench_ffn, the 1.3B DiT per NFE with it and with the row-scaled FFN,
#                                       turbovid bench on the 1.3B
#   bash scripts/gpu_verify.sh s30c     one GPU, ~6 min (ran at 35564da; its UP_PINGPONG switch and the folded promotion
#                                       are gone since): s30a's parts with the magic-number conversions and the
#                                       ping-pong ffn_up with its hand-over barrier (s30b, at a8ff999, crashed without
#                                       it: a partition waited on a ring slot's parity several laps ahead)
#   bash scripts/gpu_verify.sh s30d     one GPU, ~4 min: the block-scaled FFN as kept (GPU tests, kernels.bench_ffn), then
#                                       turbovid bench on the 1.3B (default row-scaled FFN; the precompile's retry)
#   bash scripts/gpu_verify.sh s31a     one GPU, ~5 min, NOT RUN YET (OLD_SRC: a tree at ed1d6b8 or earlier): the GELU
#                                       quant pass taking a row's absmax from GELU(max x) (its SASS: 964 instructions
#                                       per thread at 1.3B instead of 1224) against OLD_SRC's: the pass alone at the
#                                       1.3B / 14B FFN shapes, its GPU test, the 1.3B and 14B DiT per NFE from both
#   bash scripts/gpu_verify.sh s31b     one GPU, ~7 min (OLD_SRC: a tree at ed1d6b8 or earlier): s31a, then Nsight Compute
#                                       on the SageSLA attention kernel alone (1.3B shape): issue slots, per-pipe use
#                                       (xu: exp2 and conversions; fma; alu; tensor), warp stalls
#   bash scripts/gpu_verify.sh s31c     one GPU, ~8 min: SageSLA's Gluon attention kernel (kernels/sagesla_gluon.py): its GPU
#                                       tests and the Triton SageSLA GPU tests, scripts/attn_probe.py (each kernel alone
#                                       at the 1.3B / 14B shapes), the 1.3B DiT per NFE with each kernel, alternately
#   bash scripts/gpu_verify.sh s31d     one GPU, ~9 min (ran at 40fc684; its MERGED / PINGPONG forms are gone since, so its DiT
#                                       part no longer runs): the Gluon attention's GPU tests (each form against the Triton kernel
#                                       and the fp32 reference), scripts/attn_probe.py with its forms (ring depth, one
#                                       barrier per slot, ping-pong softmaxes), Nsight Compute on it (1.3B shape), the
#                                       1.3B DiT per NFE with the Triton kernel and two Gluon forms, alternately
#   bash scripts/gpu_verify.sh s31e     one GPU, ~3 min: the Gluon attention as kept (2 slots, no ping-pong): its GPU tests, then
#                                       scripts/attn_probe.py at the 1.3B shape
#   bash scripts/gpu_verify.sh s36d     one GPU, ~4 min: the Gluon residual norm's GPU tests (s36c's were cut after 10 of 13), then
#                                       the 1.3B DiT per NFE A/B with the default of two 1536 rows per program
#   bash scripts/gpu_verify.sh s36c     one GPU, ~8 min: the Gluon residual norm (kernels/adaln_gluon.py): scripts/norm_probe.py
#                                       (Triton vs Gluon at the 1.3B / 14B shapes), its GPU tests, then the 14B and 1.3B DiT
#                                       per NFE A/B (bench_dit --graphs --ab-env TURBOVID_WORKER__NORM_KERNEL=triton,auto)
#   bash scripts/gpu_verify.sh s36a     one GPU, ~8 min (ran in session 36, from commit f47e9d5, whose kernels/sagesla_prep.py and
#                                       scripts/prep_probe.py were then removed: slower): SageSLA's preparation as programs
#                                       looping over a head's blocks (the K pass summing phi(K)ᵀ V in registers, the Q pass
#                                       loading LIN_M once) vs the split form, its GPU tests, the 14B and 1.3B DiT A/B
#   bash scripts/gpu_verify.sh s35d     one GPU, ~3 min: the VAE's GPU tests and the 720p I2V condition's encode (bench_vae --i2v,
#                                       no fp32 reference) with the final form of the steady encode's frame comparison
#   bash scripts/gpu_verify.sh s35c     one GPU, ~5 min (ran in session 35): the A14B I2V 720p worker from a fresh start with its own shipped kernel
#                                       list (expected: nothing compiled at launch), 3 jobs; then the same worker with
#                                       encoder_threads=16 (x264 frame threads; default 8), 3 jobs: the noise-frame tail
#   bash scripts/gpu_verify.sh s35b     one GPU, ~9 min (ran in session 35; OLD_SRC: a tree before the settled-layer skip): the VAE's GPU tests, the
#                                       I2V condition's encode at 480p / 720p (bench_vae --i2v) with this tree (fp32
#                                       reference) and OLD_SRC's, then the A14B I2V 720p whole job through real processes,
#                                       resident (3 jobs; its recorded kernel list is the one to ship), and within 32 GB
#   bash scripts/gpu_verify.sh s35a     one GPU, ~6 min (ran in session 35; its logs were then in e2e-a14b, e2e-a14b32): the
#                                       A14B I2V 720p whole job through real processes (turbovid bench: gateway, worker,
#                                       POST with an image -> MP4): resident (3 jobs), then within a 32 GB budget (2 jobs);
#                                       the worker's wall phases per job
#   bash scripts/gpu_verify.sh s34d     one GPU, ~7 min: the shipped kernel lists after session 34 (1.3B: 103 entries, 14B:
#                                       141): a fresh 1.3B start (3 jobs), a fresh 14B 720p start (2 jobs), each expected to
#                                       compile nothing at launch, then the 14B DiT's top CUDA kernels (one eager forward)
#   bash scripts/gpu_verify.sh s34c     one GPU, ~7 min (ran in session 34): the Gluon conv's forms that wait for each step's MMAs (wait0, and
#                                       aregs0 with its A views from registers: scripts/conv_gluon_probe.py --forms), then a
#                                       fresh 14B 720p worker (2 jobs), whose recorded kernel list ($OUT/logs/e2e14) has the
#                                       Gluon attention, quantization and conv specializations the shipped 14B list lacks
#   bash scripts/gpu_verify.sh s34b     one GPU, ~8 min (ran in session 34): the FFN residual inside the next block's norm1: the 1.3B DiT per NFE
#                                       (CUDA graphs) with this tree and OLD_SRC's, alternating processes, then turbovid
#                                       bench on the 1.3B (per stage and whole job; records the kernel list)
#   bash scripts/gpu_verify.sh s34a     one GPU, ~3 min (ran in session 34 with the probe's A-from-registers form, whose
#                                       outputs were wrong and which was then dropped): the Gluon conv's probe, then
#                                       turbovid bench on the 1.3B (per stage and whole job)
#   bash scripts/gpu_verify.sh s33e     one GPU, ~3 min (ran in session 33): the 1.3B whole job (start + 3 jobs) with the Gluon conv at 96 and 192
#                                       channels; its recorded kernel list has the 192-channel specializations to ship
#   bash scripts/gpu_verify.sh s33d     one GPU, ~8 min (ran in session 33): the 1.3B whole job (start + 3 jobs) with conv_kernel triton / auto /
#                                       triton / auto, then the 480p decode with the Triton conv / Gluon at 96 / at 96 + 192
#   bash scripts/gpu_verify.sh s33c     one GPU, ~8 min (ran in session 33): the Gluon conv persistent (and at 192 channels, not used): the probe
#                                       (outputs, times, the 480p decode with the Triton conv / Gluon at 96 / at 96 + 192),
#                                       its GPU tests, the 1.3B whole job (start + 3 jobs; records the kernel list)
#   bash scripts/gpu_verify.sh s33b     one GPU, ~7 min (ran in session 33): the Gluon 96-channel VAE conv (kernels/conv3d_gluon.py):
#                                       scripts/conv_gluon_probe.py (outputs, times against the Triton kernel, the 480p
#                                       decode A/B), then its GPU tests and the Triton conv's
#   bash scripts/gpu_verify.sh s33a     one GPU, ~9 min, NOT RUN YET: the shipped kernel lists after sessions 32-33: a fresh 1.3B
#                                       start (turbovid bench, per stage too; expect 0 compiled at launch from the 102-entry
#                                       list), then a fresh 14B 720p worker (2 jobs), whose recorded list
#                                       ($OUT/logs/e2e14/kernels-*.json) has the Gluon attention, quantization and VAE conv to
#                                       add to worker/autotune/NVIDIA_H200-cc90.wan2.1-t2v-14b.kernels.json
#   bash scripts/gpu_verify.sh s32d     one GPU, ~6 min (ran in session 32, at d5573e3, whose P_SMEM attention form was then
#                                       dropped: its A/B now times one form twice): attn_probe, the attention's GPU tests, the
#                                       1.3B DiT per NFE A/B, then turbovid bench on the 1.3B (whole job; records the kernel list)
#   bash scripts/gpu_verify.sh s32c     one GPU, ~6 min (ran in session 32): the Gluon quantization again (probe with 4/8/16 warps, its GPU tests
#                                       and the attention's public-call test after the check's new bound), then the 14B DiT
#                                       per NFE with each quantization kernel and with each attention kernel, one process
#   bash scripts/gpu_verify.sh s32b     one GPU, ~8 min (ran in session 32): the Gluon activation quantization (kernels/int8_quant_gluon.py):
#                                       scripts/quant_probe.py against the Triton kernel, the GPU tests of both quantization
#                                       kernels and of the Gluon attention, then the 1.3B and 14B DiT per NFE (CUDA graphs)
#                                       with TURBOVID_WORKER__QUANT_KERNEL=triton / auto, alternately on the same weights
#   bash scripts/gpu_verify.sh s32a     one GPU, ~5 min (ran in session 32): what session 31's Gluon attention does to the served job:
#                                       turbovid bench on the 1.3B (fresh start -> ready, where the kernel's first-call
#                                       check and compiles now fall in the warm-up; POST -> completed), then the 14B
#                                       DiT per NFE (CUDA graphs) with the Triton attention kernel and with the Gluon one
#   bash scripts/gpu_verify.sh s26e     one GPU, ~3 min: where the device idles in one whole 1.3B generate and what the host
#                                       does meanwhile (scripts/generate_gaps.py, torch profiler)
#   bash scripts/gpu_verify.sh s25a     one GPU, ~5 min (ran in session 25): the A14B I2V 720p whole job through real processes
#                                       (turbovid bench: gateway, worker, POST with an image -> MP4), resident, then
#                                       within a 32 GB budget (--worker-setting gpu_memory_gb=32)
# Needs: redis-server on PATH (the e2e part), the service's packages importable.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT/e2e" "$OUT/logs"
export PYTHONUNBUFFERED=1
mode=${1:-tests}
W=/tmp/turbovid-bench-weights-$mode
# sp14b SECONDS STEPS: the 14B 720p sequence-parallel bench on 2 GPUs, int8 exchange, with rank 0's profile of
# one split forward in $OUT/logs/sp14b_prof.txt; prints its result line
sp14b() {
    timeout "$1" torchrun --nproc-per-node 2 -m models.parallel --size 14b --steps "$2" --attention sagesla \
        --linear w8a8 --exchange int8 --profile "$OUT/logs/sp14b_prof.txt" 2>&1 | tee "$OUT/logs/sp14b.log" \
        | grep "^{" | tail -3
}
# in_tree RUN CMD...: CMD run in OLD_SRC (a tree of an earlier commit) when RUN starts with "old", else in this
# tree, with that tree second on PYTHONPATH (after the wheels' site): the A/B runs of one host (s26d, s28a, s28b)
in_tree() {
    local tree=$PWD
    [ "${1#old}" != "$1" ] && tree=$OLD_SRC
    shift
    (cd "$tree" && PYTHONPATH="${PYTHONPATH%%:*}:$tree" "$@")
}
# gluon_attn_tests SECONDS: the Gluon SageSLA kernel's GPU tests, failures shown with their assertion lines
gluon_attn_tests() {
    timeout "$1" python3 -m pytest -q -p no:cacheprovider --timeout 70 --tb=short -m gpu \
        tests/unit/kernels/test_sagesla_gluon.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -16
}
# turbovid_bench SECONDS: turbovid bench (1.3B whole job, 2-layer umT5); --logs keeps the worker's logs and
# autotune choices (to ship) in $OUT/logs/e2e
turbovid_bench() {
    timeout "$1" python3 -m cli.main bench --weights "$W" --text-encoder small --reps 2 --jobs 3 \
        --start-timeout 150 --job-timeout 60 --out "$OUT/bench.json" --logs "$OUT/logs/e2e" 2>&1 \
        | tee -a "$OUT/$mode.log" | grep -v " INFO \|^INFO" | tail -32
}
# e2e13 SECONDS: the 1.3B whole job through the real processes (a fresh start + 3 jobs, 2-layer umT5), logs and the
# recorded kernel list in $OUT/logs/e2e; prints its summary lines
e2e13() {
    timeout "$1" python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 3 --no-restart --skip-stages \
        --start-timeout 150 --job-timeout 60 --logs "$OUT/logs/e2e" > "$OUT/logs/bench13.log" 2>&1
    grep -E "start -> ready, fresh|POST->completed|first /|peak|rror" "$OUT/logs/bench13.log" \
        | sed 's/->MP4 downloaded.*worker:/worker:/' | cut -c1-230 | head -6
    grep -hE "precompile:|compiled .* at launch|warm-up done|conv (96|192)" "$OUT/logs/e2e"/worker*.log | cut -c1-220 | head -6
}
# bench14 SECONDS START_TIMEOUT: a fresh 14B 720p worker through real processes (2 jobs, 2-layer umT5); its logs,
# recorded kernel list and autotune choices in $OUT/logs/e2e14
bench14() {
    timeout "$1" python3 -m cli.main bench --model wan2.1-t2v-14b --size 1280x720 \
        --weights /tmp/turbovid-bench-weights-14b --text-encoder small --jobs 2 --no-restart --skip-stages \
        --start-timeout "$2" --job-timeout 60 --logs "$OUT/logs/e2e14" > "$OUT/logs/bench14.log" 2>&1
    echo "== 14B 720p"; grep -E "weights ready|start -> ready, fresh|POST->completed|first /|peak|rror" "$OUT/logs/bench14.log" \
        | cut -c1-250 | head -6
    grep -hE "memory:|precompile:|compiled .* at launch|warm-up done" "$OUT/logs/e2e14"/worker.log | cut -c1-220 | head -4
}
# a14b TAG JOBS SECONDS [SETTING=VALUE...]: the A14B I2V 720p worker through real processes (a fresh start, JOBS
# jobs, 2-layer umT5), with the given worker settings (e.g. gpu_memory_gb=32); logs in $OUT/logs/e2e-a14b-TAG
a14b() {
    local tag=$1 jobs=$2 secs=$3 extra=(); shift 3
    for kv in "$@"; do extra+=(--worker-setting "$kv"); done
    timeout "$secs" python3 -m cli.main bench --model wan2.2-i2v-a14b --weights /tmp/turbovid-bench-weights-a14b \
        --text-encoder small --jobs "$jobs" --no-restart --skip-stages --start-timeout 200 --job-timeout 90 "${extra[@]}" \
        --logs "$OUT/logs/e2e-a14b-$tag" > "$OUT/logs/bench-a14b-$tag.log" 2>&1
    echo "== A14B I2V 720p worker, $tag ${*:-}"
    grep -E "start -> ready, fresh|POST->completed|first /|peak|rror" "$OUT/logs/bench-a14b-$tag.log" \
        | sed 's/->MP4 downloaded.*worker:/worker:/' | cut -c1-330 | head -7
    grep -hE "memory:|precompile:|compiled .* at launch|wall s:|Traceback" "$OUT/logs/e2e-a14b-$tag"/worker.log \
        | sed 's/.*job [0-9a-f-]* wall/wall/' | cut -c1-230 | head -7
}
# dit_benches [ARGS]: the fast path's 1.3B and 14B DiT per NFE into $OUT/logs/dit13b.log / dit14b.log (ARGS: to
# the 1.3B run, e.g. --profile DIR)
dit_benches() {
    timeout 80 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --variants sagesla/w8a8/fused "$@" \
        > "$OUT/logs/dit13b.log" 2>&1
    timeout 110 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks --variants sagesla/w8a8/fused \
        > "$OUT/logs/dit14b.log" 2>&1
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  nproc; df -h /tmp | tail -1; } 2>&1 | tee "$OUT/$mode.log"

if [ "$mode" = x2 ]; then
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    python3 -c "import torch; print('cuda devices', torch.cuda.device_count())" | tee -a "$OUT/$mode.log"
    ( export CUDA_VISIBLE_DEVICES=1
      timeout 100 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --profile "$OUT/prof" \
          --variants sagesla/w8a8/fused,dense/native/torch > "$OUT/dit13b.log" 2>&1
      timeout 130 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks --profile "$OUT/prof" \
          --variants sagesla/w8a8/fused > "$OUT/dit14b.log" 2>&1
      timeout 150 python3 -m models.offload --size a14b --budget-gb 32 > "$OUT/offload.log" 2>&1 ) &
    gpu1=$!
    CUDA_VISIBLE_DEVICES=0 timeout 330 python3 -m cli.main bench --weights "$W" --text-encoder small --reps 2 \
        --jobs 3 --start-timeout 150 --job-timeout 60 --out "$OUT/bench.json" --logs "$OUT/e2e" 2>&1 \
        | tee -a "$OUT/$mode.log" | grep -v " INFO \|^INFO" | tail -45
    wait $gpu1
    for f in dit13b dit14b offload; do echo "== $f"; grep -v "^W\|Warning" "$OUT/$f.log" | tail -8; done
    echo "== sequence parallel, 14B 720p, 2 ranks vs 1"
    timeout 200 torchrun --nproc-per-node 2 -m models.parallel --size 14b --steps 4 --attention sagesla \
        --linear w8a8 2>&1 | tee "$OUT/sp14b.log" | grep -v "^W" | tail -5
elif [ "$mode" = x2b ]; then
    # GPU 1: the A14B I2V 720p whole job, resident vs a 32 GiB budget; GPU 0: turbovid bench (1.3B whole
    # job); then both: the 14B sequence-parallel bench. Profiles and logs are packed into one tarball.
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    ( export CUDA_VISIBLE_DEVICES=1
      timeout 290 python3 -m models.bench_a14b --size a14b --budget-gb 32 > "$OUT/a14b_whole.log" 2>&1
      timeout 60 python3 -m models.bench_dit --sizes 1.3b --reps 2 --no-checks --profile "$OUT/logs/prof" \
          --variants sagesla/w8a8/fused > "$OUT/logs/dit13b.log" 2>&1 ) &
    gpu1=$!
    CUDA_VISIBLE_DEVICES=0 timeout 300 python3 -m cli.main bench --weights "$W" --text-encoder small --reps 2 \
        --jobs 3 --start-timeout 150 --job-timeout 60 --out "$OUT/bench.json" --logs "$OUT/logs/e2e" 2>&1 \
        | tee -a "$OUT/$mode.log" | grep -v " INFO \|^INFO" | tail -32
    wait $gpu1
    echo "== A14B I2V 720p whole job, 32 GiB budget"; grep -v "^W\|Warning" "$OUT/a14b_whole.log" | tail -6
    echo "== sequence parallel, 14B 720p, 2 ranks vs 1"
    timeout 200 torchrun --nproc-per-node 2 -m models.parallel --size 14b --steps 4 --attention sagesla \
        --linear w8a8 2>&1 | tee "$OUT/logs/sp14b.log" | grep -v "^W\|Warning\|warn\|return func" | tail -3
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = x2c ]; then
    # GPU 1: the A14B I2V 720p whole job, resident vs a 32 GiB budget; GPU 0 meanwhile: the 1.3B DiT kernel
    # profile and the MP4 encode-tail micro-bench; then both GPUs: scripts/gpu_ranks.sh (a --gpus 2 worker).
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    ( CUDA_VISIBLE_DEVICES=1 timeout 250 python3 -m models.bench_a14b --size a14b --budget-gb 32 \
          > "$OUT/a14b_whole.log" 2>&1 ) &
    gpu1=$!
    CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -m models.bench_dit --sizes 1.3b --reps 2 --no-checks \
        --profile "$OUT/logs/prof" --variants sagesla/w8a8/fused > "$OUT/logs/dit13b.log" 2>&1
    timeout 60 python3 -m worker.encode --decode-s 0.9 --repeats 5 2>&1 | tail -6
    wait $gpu1
    echo "== A14B I2V 720p whole job, 32 GiB budget"; grep -v "^W\|Warning" "$OUT/a14b_whole.log" | tail -8
    JOBS=2 OUT="$OUT/logs/ranks" timeout 230 bash scripts/gpu_ranks.sh wan2.1-t2v-1.3b 832x480 81 2>&1 | tail -30
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = x2d ]; then
    # Session 15's changes, not yet run on a GPU (~9.5 min on nvidia-h200-x2). GPU 0: the GPU tests of the
    # changed paths, the 1.3B DiT profile (cross-attention norms/residual on the kernels, the FFN's GELU in
    # the quant pass), turbovid bench (whole job; --logs keeps the worker's autotune choices to ship).
    # GPU 1 meanwhile: the 14B DiT, then the encode tail on noise frames (CPU) at several x264 thread
    # counts, sliced and frame threads (worker.encoder_threads / encoder_thread_type), and with a GIL-holding "decode" thread (--busy: on 2 cores here the
    # tail grew 0.14 -> 0.63 s with it, so the encoder thread does wait for the GIL). The multi-GPU measurements are mode x2e.
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    ( export CUDA_VISIBLE_DEVICES=1
      timeout 130 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks --variants sagesla/w8a8/fused \
          > "$OUT/logs/dit14b.log" 2>&1
      timeout 75 python3 -m worker.encode --content noise --decode-s 0.9 --threads 4,6,8 --frame-threads \
          --repeats 3 > "$OUT/logs/tail_noise_480p.log" 2>&1
      timeout 120 python3 -m worker.encode --content noise --size 1280x720 --decode-s 2.25 --threads 4,8,11 \
          --frame-threads --repeats 2 > "$OUT/logs/tail_noise_720p.log" 2>&1
      timeout 70 python3 -m worker.encode --content noise --decode-s 0.9 --threads 8 --repeats 3 --busy \
          > "$OUT/logs/tail_noise_480p_busy.log" 2>&1 ) &
    gpu1=$!
    export CUDA_VISIBLE_DEVICES=0
    timeout 110 python3 -m pytest -v -m gpu -p no:cacheprovider --timeout 100 \
        tests/unit/kernels/test_w8a8_gpu.py::test_ffn_down_with_the_gelu_in_its_quant_pass_at_wan_shapes \
        tests/unit/models/test_ops.py::test_cuda_fused_kernels_match_plain_pytorch \
        tests/unit/models/test_pipeline_gpu.py tests/unit/kernels/test_sagesla_kernels.py 2>&1 \
        | tee "$OUT/logs/tests.log" | grep -E "PASS|FAIL|ERROR|passed|failed" | tail -20
    timeout 80 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --profile "$OUT/logs/prof" \
        --variants sagesla/w8a8/fused,dense/native/torch > "$OUT/logs/dit13b.log" 2>&1
    timeout 230 python3 -m cli.main bench --weights "$W" --text-encoder small --reps 2 --jobs 3 \
        --start-timeout 150 --job-timeout 60 --out "$OUT/bench.json" --logs "$OUT/logs/e2e" 2>&1 \
        | tee -a "$OUT/$mode.log" | grep -v " INFO \|^INFO" | tail -32
    unset CUDA_VISIBLE_DEVICES
    wait $gpu1
    for f in dit13b dit14b tail_noise_480p tail_noise_720p tail_noise_480p_busy; do
        echo "== $f"; grep -v "^W\|Warning" "$OUT/logs/$f.log" | tail -11; done
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = x2e ]; then
    # Session 15's multi-GPU changes (~5 min on nvidia-h200-x2): the 14B 720p sequence-parallel bench with
    # q/k/v exchanged as bf16 and as int8 (Done-when: ratio <= 0.55, cos >= 0.999), then guided steps
    # (flow + CFG) with sequence parallel vs CFG parallel (what --gpus 2 workers pick for guided jobs).
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    echo "== sequence parallel, 14B 720p, 2 ranks vs 1, q/k/v as bf16 and as int8"
    timeout 240 torchrun --nproc-per-node 2 -m models.parallel --size 14b --steps 4 --attention sagesla \
        --linear w8a8 --exchange bf16,int8 2>&1 | tee "$OUT/logs/sp14b.log" | grep "^{" | tail -3
    echo "== guided steps (flow + CFG), 1.3B 480p: sequence parallel vs CFG parallel"
    timeout 100 torchrun --nproc-per-node 2 -m models.parallel --size 1.3b --steps 4 --guided \
        --exchange bf16,int8 2>&1 | tee "$OUT/logs/guided13b.log" | grep "^{" | tail -4
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = x2f ]; then
    # Profiles (~8 min on nvidia-h200-x2): GPU 0 the 1.3B DiT forward's kernel table; GPU 1 the VAE decode with
    # taps2d (tap sums fused into the norm pass since its last timing) next to cuDNN conv3d, and its profile;
    # then both GPUs: rank 0's kernel table of one 14B 720p split forward (int8 exchange).
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    ( CUDA_VISIBLE_DEVICES=1 timeout 220 python3 -m models.bench_vae --sizes 832x480,1280x720 --skip-encode \
          --profile "$OUT/logs/vae_prof_taps2d.txt" --conv-impl taps2d > "$OUT/logs/vae.log" 2>&1 ) &
    gpu1=$!
    CUDA_VISIBLE_DEVICES=0 timeout 220 python3 -m models.bench_dit --sizes 1.3b --reps 2 --no-checks \
        --profile "$OUT/logs/prof" --variants sagesla/w8a8/fused > "$OUT/logs/dit13b.log" 2>&1
    wait $gpu1
    for f in dit13b vae; do echo "== $f"; grep -v "^W\|Warning\|warn" "$OUT/logs/$f.log" | tail -14; done
    echo "== 14B 720p split forward profile (rank 0), int8 exchange"
    sp14b 200 2
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = x2g ]; then
    # Session 16's changes (~8 min on nvidia-h200-x2). GPU 1: the top-k block selection (bisection vs sort),
    # the VAE (biases in the norm passes, taps2d default, encode too) and its profile. GPU 0: the GPU tests
    # of the changed kernels, then turbovid bench (whole job: 8 x264 threads, the new VAE; --logs keeps the
    # worker's autotune choices). Then both GPUs: the 14B 720p sequence-parallel bench (int8 exchange) with
    # rank 0's profile of one split forward.
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    ( export CUDA_VISIBLE_DEVICES=1
      timeout 40 python3 -m kernels.sla_blockmap > "$OUT/logs/blockmap.log" 2>&1
      timeout 190 python3 -m models.bench_vae --sizes 832x480,1280x720 --profile "$OUT/logs/vae_prof.txt" \
          > "$OUT/logs/vae.log" 2>&1 ) &
    gpu1=$!
    export CUDA_VISIBLE_DEVICES=0
    timeout 100 python3 -m pytest -v -m gpu -p no:cacheprovider --timeout 90 tests/unit/models/test_vae_gpu.py \
        tests/unit/kernels/test_rmsnorm_silu.py tests/unit/kernels/test_sagesla_blockmap.py 2>&1 \
        | tee "$OUT/logs/tests.log" | grep -E "PASS|FAIL|ERROR|passed|failed" | tail -20
    timeout 230 python3 -m cli.main bench --weights "$W" --text-encoder small --reps 2 --jobs 3 \
        --start-timeout 150 --job-timeout 60 --out "$OUT/bench.json" --logs "$OUT/logs/e2e" 2>&1 \
        | tee -a "$OUT/$mode.log" | grep -v " INFO \|^INFO" | tail -32
    unset CUDA_VISIBLE_DEVICES
    wait $gpu1
    for f in blockmap vae; do echo "== $f"; grep -v "^W\|Warning\|warn" "$OUT/logs/$f.log" | tail -16; done
    echo "== sequence parallel, 14B 720p, 2 ranks vs 1, int8 exchange"
    sp14b 300 4  # (its run in session 16 had 170 s and was cut short: x2h)
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = x2h ]; then
    # ~5 min on nvidia-h200-x2: the 14B 720p sequence-parallel bench alone (int8 exchange) with the top-k bit
    # search, and rank 0's profile of one split forward (x2g's run of it timed out).
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    echo "== sequence parallel, 14B 720p, 2 ranks vs 1, int8 exchange"
    sp14b 330 4
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = x2i ]; then
    # ~5 min on nvidia-h200-x2, logs straight into $OUT (a call cut short still returns them). GPU 1: the 480p
    # VAE decode, its GPU tests, the activation-quant pass by num_warps. GPU 0: the A14B I2V 720p whole job
    # within 32 GiB (session 16: 14.86 s; 17.8 s in session 14; target 12 s). (Session 16's run also timed a
    # direct Triton RGB-head conv, 0.65x cuDNN, since removed.)
    ( export CUDA_VISIBLE_DEVICES=1
      timeout 110 python3 -m models.bench_vae --sizes 832x480 --skip-encode > "$OUT/vae.log" 2>&1
      timeout 75 python3 -m pytest -v -m gpu -p no:cacheprovider --timeout 70 \
          tests/unit/models/test_vae_gpu.py > "$OUT/tests.log" 2>&1
      timeout 30 python3 scripts/quant_warps.py > "$OUT/quant.log" 2>&1 ) &
    gpu1=$!
    CUDA_VISIBLE_DEVICES=0 timeout 250 python3 -m models.bench_a14b --size a14b --budget-gb 32 > "$OUT/a14b.log" 2>&1
    wait $gpu1
    for f in vae tests quant a14b; do echo "== $f"; grep -v "^W\|Warning\|warn" "$OUT/$f.log" | tail -12; done
elif [ "$mode" = x2j ]; then
    # Session 17 (~8 min on nvidia-h200-x2), logs straight into $OUT. First the GPU tests of the changed kernels
    # (GPU 0: the quant pass with the tanh.approx GELU and chunked input, rmsnorm_rope's split output, the W8A8
    # GELU test at Wan shapes; GPU 1: SageSLA's token-major output, the fused ops, the pipeline), then both
    # GPUs: the 14B 720p split with the pack-free bf16 exchange (projections write the send layout, the output
    # projection gathers the way back) next to int8, 1 and 2 head groups; rank 0 profiles a bf16 split forward.
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    ( CUDA_VISIBLE_DEVICES=1 timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 190 \
          tests/unit/kernels/test_sagesla_kernels.py tests/unit/models/test_ops.py > "$OUT/tests1.log" 2>&1 ) &
    gpu1=$!
    # the chunked-layout tests are CPU tests that take the GPU when there is one: run them by name
    CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 \
        tests/unit/kernels/test_int8_quant.py tests/unit/kernels/test_rmsnorm_rope.py \
        "tests/unit/kernels/test_w8a8_gpu.py::test_ffn_down_with_the_gelu_in_its_quant_pass_at_wan_shapes" \
        -k "chunk or explicit_configs or gpu" > "$OUT/tests0.log" 2>&1
    wait $gpu1
    for f in tests0 tests1; do echo "== $f"; grep -E "passed|failed|Error|FAIL" "$OUT/$f.log" | tail -8; done
    echo "== sequence parallel, 14B 720p, 2 ranks vs 1: pack-free bf16, 2 and 1 head groups (int8: 0.565, x2j's first run)"
    timeout 360 torchrun --nproc-per-node 2 -m models.parallel --size 14b --steps 4 --attention sagesla \
        --linear w8a8 --exchange bf16 --head-groups 2,1 --profile "$OUT/sp14b_prof.txt" > "$OUT/sp14b.log" 2>&1
    grep "^{" "$OUT/sp14b.log"; grep -v "^W\|Warning\|warn\|^{" "$OUT/sp14b.log" | tail -5
elif [ "$mode" = gemm ]; then
    timeout 240 python3 scripts/gemm_variants.py 2>&1 | tee "$OUT/gemm.log" | grep -v "^W\|Warning\|warn"
elif [ "$mode" = x2l ]; then
    ( export CUDA_VISIBLE_DEVICES=1
      timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 90 tests/unit/kernels/test_w8a8_gpu.py \
          > "$OUT/logs/tests.log" 2>&1
      dit_benches ) &
    gpu1=$!
    CUDA_VISIBLE_DEVICES=0 turbovid_bench 240
    wait $gpu1
    grep -E "passed|failed" "$OUT/logs/tests.log" | tail -3
    for f in dit13b dit14b; do echo "== $f"; grep -v "^W\|Warning\|warn" "$OUT/logs/$f.log" | tail -3; done
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = a14b2 ]; then
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    timeout 220 torchrun --nproc-per-node 2 -m models.bench_a14b --ranks --exchange bf16 > "$OUT/a14b_ranks.log" 2>&1
    grep "^{" "$OUT/a14b_ranks.log"; grep -v "^W\|Warning\|warn\|^{" "$OUT/a14b_ranks.log" | tail -4
elif [ "$mode" = x2k ]; then
    # Session 17 (~8 min on nvidia-h200-x2), logs into $OUT. GPU 0: turbovid bench (whole job; --logs keeps the
    # worker's autotune choices to ship). GPU 1 meanwhile: the quant pass (tanh.approx GELU vs sigmoid), the 1.3B
    # and 14B DiT. Then both GPUs: the A14B I2V 720p whole job on 2 GPUs vs 1 (bf16 and int8 exchange).
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    ( export CUDA_VISIBLE_DEVICES=1
      timeout 40 python3 scripts/quant_warps.py > "$OUT/quant.log" 2>&1
      dit_benches --profile "$OUT/logs/prof" ) &
    gpu1=$!
    CUDA_VISIBLE_DEVICES=0 turbovid_bench 240
    wait $gpu1
    for f in quant logs/dit13b logs/dit14b; do echo "== $f"; grep -v "^W\|Warning\|warn" "$OUT/$f.log" | tail -8; done
    echo "== A14B I2V 720p whole job, 2 GPUs vs 1"
    timeout 250 torchrun --nproc-per-node 2 -m models.bench_a14b --ranks --exchange bf16,int8 > "$OUT/a14b_ranks.log" 2>&1
    grep "^{" "$OUT/a14b_ranks.log"; grep -v "^W\|Warning\|warn\|^{" "$OUT/a14b_ranks.log" | tail -6
    tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
elif [ "$mode" = s18a ]; then
    timeout 60 python3 scripts/vae_tap_merge.py > "$OUT/tap_merge.log" 2>&1; cat "$OUT/tap_merge.log"
    timeout 150 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --profile "$OUT/prof" \
        --variants sagesla/w8a8/fused > "$OUT/dit13b.log" 2>&1; tail -3 "$OUT/dit13b.log"
    timeout 100 python3 -m models.bench_vae --sizes 832x480 --skip-encode --profile "$OUT/vae_prof.txt" \
        > "$OUT/vae.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae.log" | tail -6
elif [ "$mode" = s18b ]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 110 tests/unit/models/test_vae_gpu.py \
        tests/unit/kernels/test_pixel_interleave.py tests/unit/models/test_vae.py -k "gpu or interleave or fused_residual" \
        > "$OUT/tests.log" 2>&1; grep -E "passed|failed|Error" "$OUT/tests.log" | tail -5
    timeout 150 python3 -m models.bench_vae --sizes 832x480 --conv-frames 2,4,8 --profile "$OUT/vae_prof.txt" \
        > "$OUT/vae480.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae480.log" | grep -A30 "^size" | head -16
    timeout 120 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --conv-frames 4 \
        > "$OUT/vae720.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae720.log" | grep -A12 "^size"
elif [ "$mode" = s18c ]; then
    timeout 100 python3 scripts/vae_tap_merge.py --sweep 2>&1 | tee "$OUT/sweep.log" | grep -v "^W\|Warning\|warn"
    timeout 120 python3 -m models.bench_vae --sizes 832x480 --no-reference --cudnn-benchmark --conv-frames 4,16 \
        > "$OUT/vae480.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae480.log" | grep -A30 "^size" | head -16
    timeout 100 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference --cudnn-benchmark \
        > "$OUT/vae720.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae720.log" | grep -A12 "^size"
elif [ "$mode" = s19a ]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 tests/unit/kernels/test_conv3d_igemm.py \
        tests/unit/models/test_vae_gpu.py -k "gpu or vae_widths or fast_decode" > "$OUT/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/tests.log" | tail -8
    timeout 120 python3 -m kernels.conv3d_igemm 2>&1 | grep -v "^W\|Warning\|warn" | tee "$OUT/conv.log"
    timeout 150 python3 -m models.bench_vae --sizes 832x480 --igemm 96,96+192 > "$OUT/vae480.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/vae480.log" | grep -A20 "^size"
    timeout 100 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference --igemm 96,96+192 \
        > "$OUT/vae720.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae720.log" | grep -A12 "^size"
elif [ "$mode" = s19b ]; then
    turbovid_bench 250
    timeout 110 python3 -m models.bench_vae --sizes 832x480 --skip-encode --igemm 96,96+192 > "$OUT/vae480.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/vae480.log" | grep -A14 "^size"
    timeout 80 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference --igemm 96,96+192 \
        > "$OUT/vae720.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae720.log" | grep -A12 "^size"
    timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 110 tests/unit/kernels/test_conv3d_igemm.py \
        tests/unit/models/test_vae_gpu.py > "$OUT/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/tests.log" | tail -8
elif [ "$mode" = s19c ]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 110 tests/unit/kernels/test_conv3d_igemm.py \
        tests/unit/models/test_vae_gpu.py > "$OUT/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/tests.log" | tail -8
    timeout 90 python3 -m kernels.conv3d_igemm 2>&1 | grep -v "^W\|Warning\|warn" | tee "$OUT/conv.log"
    timeout 110 python3 -m models.bench_vae --sizes 832x480 --skip-encode --igemm 96,96+192 > "$OUT/vae480.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/vae480.log" | grep -A14 "^size"
    timeout 80 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference --igemm 96,96+192 \
        > "$OUT/vae720.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae720.log" | grep -A12 "^size"
elif [ "$mode" = s20d ]; then
    # the I2V encode with steady frames skipped: the VAE encode GPU tests, the 480p / 720p I2V condition encode
    # with every frame vs skipped (same run), the A14B I2V 720p whole job (resident and 32 GiB budget)
    timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout 190 tests/unit/models/test_vae_gpu.py -k encode \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
    timeout 150 python3 -m models.bench_vae --sizes 832x480,1280x720 --skip-encode --skip-decode --i2v \
        > "$OUT/logs/vae_i2v.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/logs/vae_i2v.log" | tail -8
    timeout 280 python3 -m models.bench_a14b --size a14b --budget-gb 32 > "$OUT/logs/a14b.log" 2>&1
    grep -v "^W\|Warning" "$OUT/logs/a14b.log" | tail -4
elif [ "$mode" = s20e ]; then
    # the 192-wide residual blocks on the implicit-GEMM conv: tune them at 480p and 720p into a copy of the
    # shipped choices (to ship), then the 480p / 720p decode rows by igemm width and the I2V encode
    timeout 200 python3 scripts/vae_autotune_choices.py --widths 96,192 --out "$OUT/NVIDIA_H200-cc90.json" 2>&1 \
        | grep -v "^W\|Warning" | tail -5
    timeout 230 python3 -m models.bench_vae --sizes 832x480,1280x720 --skip-encode --no-reference --i2v \
        --igemm 96,96+192 > "$OUT/logs/vae.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/logs/vae.log" | tail -20
elif [ "$mode" = s21a ]; then
    # where the 720p decode's time goes: rows by chunk size (720p: 1 latent per chunk by default) and the profile;
    # 480p by chunk size; the 1.3B DiT's kernel profile
    timeout 150 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference --rows chunk,igemm \
        --igemm 96+192 --chunks 1,2,3 --profile "$OUT/logs/vae720_prof.txt" > "$OUT/logs/vae720.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/logs/vae720.log" | grep -A8 "^size"
    timeout 100 python3 -m models.bench_vae --sizes 832x480 --skip-encode --no-reference --rows chunk,igemm \
        --igemm 96+192 --chunks 4,7,10 > "$OUT/logs/vae480.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/logs/vae480.log" | grep -A8 "^size"
    timeout 150 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --variants sagesla/w8a8/fused \
        --profile "$OUT/logs/dit" > "$OUT/logs/dit.log" 2>&1; grep "^{" "$OUT/logs/dit.log"
elif [ "$mode" = s21b ]; then
    timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout 190 tests/unit/models/test_vae_gpu.py \
        tests/unit/kernels/test_softmax_rows.py -k "not encode" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
    timeout 150 python3 -m models.bench_vae --sizes 832x480 --skip-encode --rows "igemm,sdpa,chunk" --chunks 7 \
        --igemm 96+192 > "$OUT/logs/vae480.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/logs/vae480.log" | grep -A8 "^size"
    timeout 150 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference --rows "igemm,sdpa" \
        --igemm 96+192 --profile "$OUT/logs/vae720_prof.txt" > "$OUT/logs/vae720.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/logs/vae720.log" | grep -A8 "^size"
elif [ "$mode" = s21c ]; then
    timeout 100 python3 -m models.bench_vae --sizes 832x480 --skip-encode --no-reference --rows "igemm,sdpa" \
        --igemm 96+192 --profile "$OUT/logs/vae480_prof.txt" > "$OUT/logs/vae480.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/logs/vae480.log" | grep -A4 "^size"
    timeout 100 python3 -m models.bench_vae --sizes 832x480,1280x720 --skip-encode --skip-decode --i2v \
        > "$OUT/logs/vae_i2v.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/logs/vae_i2v.log" | grep -A6 "^size"
    turbovid_bench 400
    grep -rh "another version of its source" "$OUT/logs/e2e" | cut -c1-200 | head -5
elif [ "$mode" = s21d ]; then
    turbovid_bench 300
    grep -rh "another version of its source" "$OUT/logs/e2e" | cut -c1-200 | head -5
    timeout 230 python3 -m models.bench_a14b --size a14b --budget-gb 32 > "$OUT/logs/a14b.log" 2>&1
    grep -v "^W\|Warning" "$OUT/logs/a14b.log" | tail -4
    timeout 50 python3 -m pytest -q -p no:cacheprovider --timeout 45 tests/unit/models/test_vae_gpu.py \
        -k "fast_decode or frame_attention" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
elif [ "$mode" = s22a ]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 tests/unit/kernels/test_w8a8_gpu.py \
        tests/unit/kernels/test_int8_quant.py tests/unit/models/test_ops.py -k "residual or gelu or fused or pieces" \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -8
    timeout 60 python3 scripts/quant_warps.py --pieces 2>&1 | grep -v "^W\|Warning" | tail -5
    timeout 150 python3 -m kernels.w8a8 --residual 2>&1 | grep -v "^W\|Warning" | tail -5
    timeout 150 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --graphs \
        --variants sagesla/w8a8/fused,sagesla/w8a8/split --profile "$OUT/logs/dit" > "$OUT/logs/dit.log" 2>&1
    grep "^{" "$OUT/logs/dit.log"
    timeout 200 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks \
        --variants sagesla/w8a8/fused,sagesla/w8a8/split > "$OUT/logs/dit14.log" 2>&1
    grep "^{" "$OUT/logs/dit14.log"
elif [ "$mode" = s22b ]; then
    nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread|MHz" | head -5
    for busy in "" "--busy"; do
        timeout 100 python3 -m worker.encode --content noise --decode-s 0.6 --repeats 3 --threads 8,12,16 \
            --frame-threads $busy 2>&1 | grep -v "^W\|Warning" | tail -11
    done
    turbovid_bench 330
    grep -rh "another version of its source" "$OUT/logs/e2e" | cut -c1-200 | head -5
elif [ "$mode" = s22c ]; then
    for busy in "" "--busy"; do
        timeout 60 python3 -m worker.encode --content sample --decode-s 0.6 --repeats 3 --threads 8 \
            --frame-threads $busy 2>&1 | grep -v "^W\|Warning" | grep "thr"
    done
    turbovid_bench 330
    grep -rh "another version of its source" "$OUT/logs/e2e" | cut -c1-200 | head -5
elif [ "$mode" = s22d ]; then
    timeout 90 python3 -m pytest -q -p no:cacheprovider --timeout 80 tests/unit/models/test_samplers.py \
        tests/unit/kernels/test_int8_quant.py tests/unit/worker/test_encode.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
    turbovid_bench 300
    grep -rh "another version of its source" "$OUT/logs/e2e" | cut -c1-200 | head -5
    timeout 280 python3 -m models.bench_a14b --size a14b --budget-gb 32 > "$OUT/logs/a14b.log" 2>&1
    grep -v "^W\|Warning" "$OUT/logs/a14b.log" | grep -v "denoise [0-9]\|decode [0-9]\|encode [0-9]" | tail -8
elif [ "$mode" = s24a ]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 -m gpu tests/unit/kernels/test_adaln.py \
        -k "not every_config" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    turbovid_bench 330
    grep -rhE "another version of its source|precompile:|compiled .* at launch|tun" "$OUT/logs/e2e"/*worker*.log \
        | cut -c1-200 | head -8
    timeout 150 python3 scripts/decode_in_pipeline.py --weights "$W" --reps 3 > "$OUT/logs/decode.log" 2>&1
    grep -v "^W\|Warn\|warn\|USDT" "$OUT/logs/decode.log" | grep -A8 -E "^A |^B |nvidia-smi|median" | head -40
elif [ "$mode" = s25a ]; then
    for budget in "" 32; do
        extra=(); [ -n "$budget" ] && extra=(--worker-setting gpu_memory_gb=$budget)
        timeout 280 python3 -m cli.main bench --model wan2.2-i2v-a14b --weights /tmp/turbovid-bench-weights-a14b \
            --text-encoder small --jobs 2 --no-restart --skip-stages --start-timeout 200 --job-timeout 90 \
            "${extra[@]}" --logs "$OUT/logs/e2e-a14b$budget" > "$OUT/logs/bench-a14b$budget.log" 2>&1
        echo "== A14B I2V 720p worker, budget ${budget:-none}"
        grep -E "weights ready|start -> ready, fresh|POST->completed|peak|rror" "$OUT/logs/bench-a14b$budget.log" \
            | cut -c1-300 | head -5
        grep -hE "precompile:|compiled .* at launch|warm-up done|memory plan|budget" "$OUT/logs/e2e-a14b$budget"/worker.log \
            | cut -c1-200 | head -5
    done
elif [ "$mode" = s25b ]; then
    timeout 240 python3 -m cli.main bench --model wan2.2-i2v-a14b --weights /tmp/turbovid-bench-weights-a14b \
        --text-encoder small --jobs 2 --no-restart --skip-stages --start-timeout 200 --job-timeout 90 \
        --worker-setting gpu_memory_gb=32 --logs "$OUT/logs/e2e-a14b32" > "$OUT/logs/bench-a14b32.log" 2>&1
    echo "== A14B I2V 720p worker, budget 32 GiB, plan from the checkpoint files"
    grep -E "weights ready|start -> ready, fresh|POST->completed|peak|rror" "$OUT/logs/bench-a14b32.log" | cut -c1-330 | head -6
    grep -hE "memory:|precompile:|compiled .* at launch|CUDA graphs|out of memory|Traceback" "$OUT/logs/e2e-a14b32"/worker.log \
        | cut -c1-220 | head -6
    rm -rf /tmp/turbovid-bench-weights-a14b
    turbovid_bench 330
    grep -rhE "memory:|another version of its source|compiled .* at launch" "$OUT/logs/e2e"/worker.log | cut -c1-200 | head -4
elif [ "$mode" = s26b ]; then
    turbovid_bench 420
    echo "== the worker's wall-clock phases per job"
    grep -h "wall s:" "$OUT/logs/e2e"/worker*.log | sed 's/.*job /job /' | cut -c1-260
elif [ "$mode" = s26c ]; then
    timeout 100 python3 -m pytest -q -p no:cacheprovider --timeout 90 -m gpu tests/unit/models/test_pipeline_gpu.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    turbovid_bench 400
    echo "== the worker's wall-clock phases per job"
    grep -h "wall s:" "$OUT/logs/e2e"/worker*.log | sed 's/.*job /job /' | cut -c1-260
    echo "== x264 noise tail by frame-thread count on this host ($(nproc) CPUs)"
    timeout 90 python3 -m worker.encode --content noise --decode-s 0.64 --threads 8,12,16 --frame-threads 2>&1 | tail -8
elif [ "$mode" = s26d ]; then
    # A/B on one host: OLD_SRC (a tree of an earlier commit) and this tree, alternately, the same weights
    timeout 100 python3 -m pytest -q -p no:cacheprovider --timeout 90 -m gpu tests/unit/models/test_pipeline_gpu.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    for run in old1 new1 old2 new2; do
        in_tree "$run" timeout 200 python3 -m cli.main bench --weights "$W" \
            --text-encoder small --jobs 4 --no-restart --skip-stages --start-timeout 150 --job-timeout 60 \
            --logs "$OUT/logs/e2e-$run" > "$OUT/logs/bench-$run.log" 2>&1
        echo "== $run ($(in_tree "$run" git log --oneline -1 2>/dev/null | cut -c1-7))"
        grep -E "POST->completed" "$OUT/logs/bench-$run.log" | grep -v "^\[" | cut -c1-120 | head -5
        grep -h "wall s:" "$OUT/logs/e2e-$run"/worker*.log | sed 's/.*wall s: //' | cut -c1-200
    done
elif [ "$mode" = s27a ]; then
    export PATH=$PATH:/usr/local/cuda/bin:$(ls -d /opt/nvidia/nsight-compute/*/ 2>/dev/null | tail -1)
    echo "ncu: $(command -v ncu)"
    timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 100 -m gpu tests/unit/models/test_samplers.py \
        tests/unit/models/test_pipeline_gpu.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    # hardware counters of the kernels that hold the job's time (scripts/ncu_targets.py), one process
    targets=${NCU_TARGETS:-conv96 conv192 ffn_up ffn_down sagesla}
    timeout 100 python3 scripts/ncu_targets.py $targets --time --cache /tmp/ncu-cache 2>&1 | grep -v Warn | tail -8
    inc=(); for t in $targets; do inc+=(--nvtx-include "$t/"); done
    timeout 330 ncu --clock-control none --nvtx "${inc[@]}" --section SpeedOfLight --section WarpStateStats \
        --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
        --section Occupancy --section LaunchStats --section SourceCounters --section InstructionStats \
        -f -o "$OUT/logs/targets" python3 scripts/ncu_targets.py $targets --cache /tmp/ncu-cache \
        > "$OUT/logs/ncu.log" 2>&1; echo "ncu rc $?"; tail -3 "$OUT/logs/ncu.log"
    ncu -i "$OUT/logs/targets.ncu-rep" --page details --print-units base > "$OUT/logs/details.txt" 2>&1
    ncu -i "$OUT/logs/targets.ncu-rep" --page raw --csv > "$OUT/logs/raw.csv" 2>&1
    ncu -i "$OUT/logs/targets.ncu-rep" --page source --csv --print-source sass > "$OUT/logs/source.csv" 2>&1
    ls -la "$OUT/logs" | tail -8
    grep -E "^  [_a-zA-Z].*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Warp Cycles Per Issued|Issued Ipc" \
        "$OUT/logs/details.txt" | head -60
elif [ "$mode" = s27b ]; then
    # the int8 GEMM with overlapping MMAs (Gluon) vs the Triton kernel; 256-pixel VAE conv tiles
    timeout 520 python3 scripts/tile_probe.py ${PROBE_PARTS:-gemm conv} --cache /tmp/probe-cache 2>&1 \
        | grep -v "Warn\|warn" | tee "$OUT/logs/tile_probe.log" | tail -80
elif [ "$mode" = s27c ]; then
    # the Gluon int8 GEMM in the DiT (A/B against the Triton kernel, same process kind, same host), its GPU
    # tests, then the 1.3B worker re-recording the shipped choices (conv tuned per T) and kernel list
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 -m gpu tests/unit/kernels/test_w8a8_gpu.py \
        -k "gluon or graph or wgmma or public" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    for be in triton auto; do
        TURBOVID_WORKER__W8A8_BACKEND=$be timeout 80 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --graphs \
            --variants sagesla/w8a8/fused > "$OUT/logs/dit13b-$be.log" 2>&1
        echo "== 1.3B DiT, W8A8 backend $be"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit13b-$be.log" | tail -3
    done
    timeout 230 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 2 --no-restart --skip-stages \
        --start-timeout 200 --job-timeout 60 --logs "$OUT/logs/e2e13" > "$OUT/logs/bench13.log" 2>&1
    echo "== 1.3B 480p (records)"; grep -E "start -> ready, fresh|POST->completed|rror" "$OUT/logs/bench13.log" | cut -c1-250 | head -4
    grep -hE "precompile:|compiled .* at launch|warm-up done|another version" "$OUT/logs/e2e13"/worker.log | cut -c1-200 | head -4
    mkdir -p "$OUT/ship" && cp "$OUT"/logs/e2e13/NVIDIA_H200-cc90-*.json "$OUT"/logs/e2e13/kernels-*.json "$OUT/ship/"; ls "$OUT/ship"
elif [ "$mode" = s27d ]; then
    # the 14B 720p worker re-records from the shipped 1.3B choices (both models' in the saved file), then the
    # 14B DiT A/B (Gluon vs Triton int8 GEMM)
    timeout 260 python3 -m cli.main bench --model wan2.1-t2v-14b --size 1280x720 \
        --weights /tmp/turbovid-bench-weights-14b --text-encoder small --jobs 1 --no-restart --skip-stages \
        --start-timeout 230 --job-timeout 60 --logs "$OUT/logs/e2e14" > "$OUT/logs/bench14.log" 2>&1
    echo "== 14B 720p (records)"; grep -E "weights ready|start -> ready, fresh|POST->completed|rror" "$OUT/logs/bench14.log" | cut -c1-250 | head -4
    grep -hE "precompile:|compiled .* at launch|warm-up done" "$OUT/logs/e2e14"/worker.log | cut -c1-200 | head -3
    mkdir -p "$OUT/ship" && cp "$OUT"/logs/e2e14/NVIDIA_H200-cc90-*.json "$OUT"/logs/e2e14/kernels-*.json "$OUT/ship/"; ls "$OUT/ship"
    rm -rf /tmp/turbovid-bench-weights-14b
    for be in triton auto; do
        TURBOVID_WORKER__W8A8_BACKEND=$be timeout 110 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks \
            --variants sagesla/w8a8/fused > "$OUT/logs/dit14b-$be.log" 2>&1
        echo "== 14B DiT, W8A8 backend $be"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit14b-$be.log" | tail -3
    done
elif [ "$mode" = s27e ]; then
    # the shipped files of s27c/s27d: turbovid bench on the 1.3B (fresh start, whole job, per stage), the conv's
    # GPU tests, the VAE decode alone at 480p and 720p
    timeout 60 python3 -m pytest -q -p no:cacheprovider --timeout 50 -m gpu tests/unit/kernels/test_conv3d_igemm.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -4
    turbovid_bench 400
    grep -rhE "precompile:|compiled .* at launch|warm-up done|another version of its source" "$OUT/logs/e2e"/worker*.log \
        | cut -c1-200 | head -6
    timeout 70 python3 -m models.bench_vae --sizes 832x480,1280x720 --repeats 2 --skip-encode > "$OUT/logs/bench_vae.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/bench_vae.log" | tail -10
elif [ "$mode" = s27f ]; then
    # s27e's turbovid bench again, with the kernel lists in Triton's key order (s27e's sorted ones crashed the warm-up)
    turbovid_bench 400
    grep -rhE "precompile:|compiled .* at launch|warm-up done|another version of its source|rror" "$OUT/logs/e2e"/worker*.log \
        | cut -c1-200 | head -8
elif [ "$mode" = s27g ]; then
    # the 1.3B DiT per NFE (CUDA graphs), the int8 GEMM as Triton's kernel and as the Gluon one, same host
    for be in triton gluon; do
        TURBOVID_WORKER__W8A8_BACKEND=$be timeout "${BUDGET:-140}" python3 -m models.bench_dit --sizes 1.3b --reps 3 \
            --no-checks --graphs --variants sagesla/w8a8/fused > "$OUT/logs/dit13b-$be.log" 2>&1
        echo "== 1.3B DiT, W8A8 backend $be"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit13b-$be.log" | tail -3
        BUDGET=100
    done
elif [ "$mode" = s28a ]; then
    # a hung kernel would burn the call: one small GEMM first, in its own process, with a short limit
    timeout 60 python3 -c "
import torch
from kernels import w8a8_gluon as wg
from kernels.int8_quant import quantize_activation, quantize_weight_blockwise
from kernels.w8a8 import prepare_weight, w8a8_gemm
for m, k, n in ((1000, 1536, 1536), (4096, 8960, 1536), (77, 5120, 13824)):
    wq, ws = quantize_weight_blockwise(torch.randn(n, k, device='cuda'))
    w = prepare_weight(wq, ws)
    xq, sx = quantize_activation(torch.randn(m, k, device='cuda', dtype=torch.bfloat16))
    ref = w8a8_gemm(xq, sx, w, None, torch.bfloat16, backend='tma', config=dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8))
    for cfg in wg.CONFIGS:
        y = wg.w8a8_gemm_gluon(xq, sx, w.qweight, w.scale, None, torch.bfloat16, config=cfg)
        torch.cuda.synchronize(); print(m, k, n, cfg, 'equal', torch.equal(y, ref))
" 2>&1 | grep -v Warn | tail -16 || { echo "smoke check failed or hung"; exit 1; }
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 -m gpu tests/unit/kernels/test_w8a8_gpu.py \
        -k "gluon or graph or wgmma or public" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    timeout 200 python3 scripts/tile_probe.py gemm --gluon-configs 2 --gluon-baseline "$OLD_SRC/kernels/w8a8_gluon.py" 2>&1 \
        | grep -v "Warn\|warn" | tee "$OUT/logs/tile_probe.log" | tail -60
    for run in old new old2 new2; do
        in_tree "$run" timeout 90 python3 -m models.bench_dit --sizes 1.3b --reps 3 \
            --no-checks --graphs --variants sagesla/w8a8/fused > "$OUT/logs/dit13b-$run.log" 2>&1
        echo "== 1.3B DiT, $run"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit13b-$run.log" | tail -2
    done
elif [ "$mode" = s28b ]; then
    for run in new1 old1 new2 old2; do
        in_tree "$run" timeout 150 python3 -m cli.main bench --weights "$W" \
            --text-encoder small --jobs 4 --no-restart --skip-stages --start-timeout 120 --job-timeout 60 \
            --logs "$OUT/logs/e2e-$run" > "$OUT/logs/bench-$run.log" 2>&1
        echo "== $run"
        grep -E "start -> ready|POST->completed|rror" "$OUT/logs/bench-$run.log" | grep -v "^\[" | cut -c1-160 | head -5
        grep -hE "precompile:|compiled .* at launch" "$OUT/logs/e2e-$run"/worker*.log | cut -c1-200 | head -2
        grep -h "wall s:" "$OUT/logs/e2e-$run"/worker*.log | sed 's/.*wall s: //' | cut -c1-200
    done
    timeout 150 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks --graphs --variants sagesla/w8a8/fused \
        > "$OUT/logs/dit14b.log" 2>&1; echo "== 14B DiT"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit14b.log" | tail -2
elif [ "$mode" = s30a ]; then
    # a hung kernel would burn the call: one small FFN first, in its own process, with a short limit
    timeout 90 python3 -c "
import torch
from kernels import w8a8_blockq as bq
print('usable', bq.usable(torch.device('cuda'), 8960, 1536, 1536), bq._CHECKED)
" 2>&1 | grep -v Warn | tail -4
    timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout 190 -m gpu tests/unit/kernels/test_w8a8_blockq.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout|assert" "$OUT/logs/tests.log" | head -12
    timeout 120 python3 -m kernels.bench_ffn > "$OUT/logs/bench_ffn.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/bench_ffn.log" | tail -14
    for ffn in rowq auto; do
        TURBOVID_WORKER__W8A8_FFN=$ffn timeout 120 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks \
            --graphs --variants sagesla/w8a8/fused > "$OUT/logs/dit13b-$ffn.log" 2>&1
        echo "== 1.3B DiT, w8a8_ffn $ffn"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit13b-$ffn.log" | tail -2
    done
    turbovid_bench 300
    grep -rhE "precompile:|compiled .* at launch|warm-up done|another version of its source|rror" "$OUT/logs/e2e"/worker*.log \
        | cut -c1-200 | head -8
elif [ "$mode" = s30c ]; then
    # each part in its own process: a kernel that crashes poisons its process's CUDA context
    timeout 60 python3 -c "
import torch
from kernels import w8a8_blockq as bq
print('usable', bq.usable(torch.device('cuda'), 8960, 1536, 1536))
g = torch.Generator(device='cuda').manual_seed(0)
xq = torch.randint(-127, 128, (3000, 1536), device='cuda', generator=g, dtype=torch.int8)
w = torch.randint(-127, 128, (8960, 1536), device='cuda', generator=g, dtype=torch.int8)
sx, sw = torch.rand(3000, device='cuda') * 1e-2, torch.rand(8960, device='cuda') * 1e-3
a = bq.ffn_up_gelu_q(xq, sx, w, sw, None)
b = bq.ffn_up_gelu_q(xq, sx, w, sw, None, pingpong=True)
torch.cuda.synchronize(); print('pingpong equal', torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))
" 2>&1 | grep -v Warn | tail -3 | tee "$OUT/logs/smoke.log"
pp=--no-pingpong; grep -q "pingpong equal True" "$OUT/logs/smoke.log" && pp=
    timeout 150 python3 -m kernels.bench_ffn $pp > "$OUT/logs/bench_ffn.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/bench_ffn.log" | tail -16
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 -m gpu tests/unit/kernels/test_w8a8_blockq.py \
        -k "not ping-pong" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout|^E " "$OUT/logs/tests.log" | head -8
    runs="rowq blockq"; [ -z "$pp" ] && runs="rowq blockq pingpong"
    for run in $runs; do
        ffn=auto; [ $run = rowq ] && ffn=rowq
        pp=False; [ $run = pingpong ] && pp=True
        TURBOVID_WORKER__W8A8_FFN=$ffn timeout 150 python3 -c "
import runpy, sys
import kernels.w8a8_blockq as bq
bq.UP_PINGPONG = $pp
sys.argv = ['bench_dit', '--sizes', '1.3b', '--reps', '3', '--no-checks', '--graphs', '--variants', 'sagesla/w8a8/fused']
runpy.run_module('models.bench_dit', run_name='__main__')
" > "$OUT/logs/dit13b-$run.log" 2>&1
        echo "== 1.3B DiT, FFN $run"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit13b-$run.log" | tail -2
    done
    timeout 60 python3 -m pytest -q -p no:cacheprovider --timeout 50 -m gpu tests/unit/kernels/test_w8a8_blockq.py \
        -k "ping-pong" > "$OUT/logs/tests_pp.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout|^E " "$OUT/logs/tests_pp.log" | head -4
elif [ "$mode" = s30d ]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 110 -m gpu tests/unit/kernels/test_w8a8_blockq.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout|^E " "$OUT/logs/tests.log" | head -8
    timeout 120 python3 -m kernels.bench_ffn > "$OUT/logs/bench_ffn.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/bench_ffn.log" | tail -16
    turbovid_bench 240
    grep -rhE "precompile:|compiled .* at launch|warm-up done|another version of its source|rror" "$OUT/logs/e2e"/worker*.log \
        | cut -c1-200 | head -8
elif [ "$mode" = s31a ]; then
    timeout 60 python3 -m pytest -q -p no:cacheprovider --timeout 50 -m gpu tests/unit/kernels/test_int8_quant.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|^E " "$OUT/logs/tests.log" | head -6
    for run in old new old2 new2; do
        echo "== GELU quant pass, $run (ms)"
        in_tree "$run" timeout 60 python3 -c "
import torch
from triton.testing import do_bench
from kernels.int8_quant import quantize_activation
for m, k in ((32760, 8960), (75600, 13824)):
    x = torch.randn(m, k, device='cuda', dtype=torch.bfloat16) * 3
    print(m, k, round(do_bench(lambda: quantize_activation(x, gelu=True), warmup=10, rep=100, return_mode='median'), 4))
" 2>&1 | grep -v Warn | tail -2
    done
    for run in old new; do
        in_tree "$run" timeout 110 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --graphs \
            --variants sagesla/w8a8/fused > "$OUT/logs/dit13b-$run.log" 2>&1
        echo "== 1.3B DiT, $run"; grep -v "^W\|Warning\|warn" "$OUT/logs/dit13b-$run.log" | tail -1
    done
elif [ "$mode" = s31b ]; then
    OUT=$OUT OLD_SRC=$OLD_SRC bash "$0" s31a
    export PATH=$PATH:/usr/local/cuda/bin:$(ls -d /opt/nvidia/nsight-compute/*/ 2>/dev/null | tail -1)
    timeout 150 ncu --clock-control none --nvtx --nvtx-include "sagesla/" --kernel-name regex:_sagesla_fwd \
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
        --section Occupancy --section InstructionStats --section LaunchStats \
        -f -o "$OUT/logs/attn" python3 scripts/ncu_targets.py sagesla --cache /tmp/ncu-cache \
        > "$OUT/logs/ncu.log" 2>&1; echo "ncu rc $?"; tail -2 "$OUT/logs/ncu.log"
    ncu -i "$OUT/logs/attn.ncu-rep" --page details --print-units base > "$OUT/logs/attn_details.txt" 2>&1
    ncu -i "$OUT/logs/attn.ncu-rep" --page raw --csv > "$OUT/logs/attn_raw.csv" 2>&1
    grep -E "Duration|SM Frequency|Issue Slots Busy|Issued Ipc|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Theoretical Occupancy" \
        "$OUT/logs/attn_details.txt" | head -14
    python3 - "$OUT/logs/attn_raw.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
names, vals = rows[head], rows[head + 2]
for n, v in zip(names, vals):
    if ("pipe" in n and "pct_of_peak_sustained_active" in n) or ("warp_issue_stalled" in n and n.endswith("_per_warp_active.pct")):
        try:
            if float(v.replace(",", "")) >= 1.0:
                print(f"{n} {v}")
        except ValueError:
            pass
PY
elif [ "$mode" = s31c ]; then
    timeout 170 python3 -m pytest -q -p no:cacheprovider --timeout 80 -m gpu tests/unit/kernels/test_sagesla_gluon.py \
        tests/unit/kernels/test_sagesla_kernels.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout|^E " "$OUT/logs/tests.log" | head -12
    timeout 170 python3 scripts/attn_probe.py --cache /tmp/probe-cache > "$OUT/logs/probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/probe.log" | tail -22
    for run in triton auto triton auto; do
        TURBOVID_WORKER__SAGESLA_KERNEL=$run timeout 100 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks \
            --graphs --variants sagesla/w8a8/fused > "$OUT/logs/dit13b-$run.log" 2>&1
        echo "== 1.3B DiT, attention kernel $run"; grep -E "fused|rror" "$OUT/logs/dit13b-$run.log" | tail -2
    done
elif [ "$mode" = s31d ]; then
    gluon_attn_tests 150
    timeout 150 python3 scripts/attn_probe.py --cache /tmp/probe-cache > "$OUT/logs/probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/probe.log" | tail -24
    export PATH=$PATH:/usr/local/cuda/bin:$(ls -d /opt/nvidia/nsight-compute/*/ 2>/dev/null | tail -1)
    TURBOVID_WORKER__SAGESLA_KERNEL=auto timeout 100 ncu --clock-control none --nvtx --nvtx-include "sagesla/" \
        --kernel-name regex:_sagesla_gluon --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
        --section ComputeWorkloadAnalysis --section Occupancy -f -o "$OUT/logs/attn" \
        python3 scripts/ncu_targets.py sagesla --cache /tmp/ncu-cache > "$OUT/logs/ncu.log" 2>&1; echo "ncu rc $?"
    ncu -i "$OUT/logs/attn.ncu-rep" --page details --print-units base > "$OUT/logs/attn_details.txt" 2>&1
    ncu -i "$OUT/logs/attn.ncu-rep" --page raw --csv > "$OUT/logs/attn_raw.csv" 2>&1
    grep -E "Duration|Issue Slots Busy|Warp Cycles Per Issued|No Eligible|Active Warps Per" "$OUT/logs/attn_details.txt" | head -8
    python3 - "$OUT/logs/attn_raw.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
for n, v in zip(rows[head], rows[head + 2]):
    keep = (n.startswith("sm__inst_executed_pipe_") and n.endswith(".avg.pct_of_peak_sustained_active")) or \
        n == "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active" or \
        ("warp_issue_stalled" in n and n.endswith("_per_warp_active.pct"))
    try:
        if keep and float(v.replace(",", "")) >= 2.0:
            print(n.replace("smsp__average_warp_latency_issue_stalled_", "stall ").replace("smsp__warp_issue_stalled_", "stall "), v)
    except ValueError:
        pass
PY
    for run in triton plain pp triton pp; do
        kern=auto; [ $run = triton ] && kern=triton
        merged=False; [ $run = pp ] && merged=True
        TURBOVID_WORKER__SAGESLA_KERNEL=$kern timeout 100 python3 -c "
import runpy, sys
import kernels.sagesla_gluon as sgg
sgg.MERGED = sgg.PINGPONG = $merged
sgg.attention.__defaults__ = (sgg.STAGES, $merged, $merged)
sys.argv = ['bench_dit', '--sizes', '1.3b', '--reps', '3', '--no-checks', '--graphs', '--variants', 'sagesla/w8a8/fused']
runpy.run_module('models.bench_dit', run_name='__main__')
" > "$OUT/logs/dit13b-$run.log" 2>&1
        echo "== 1.3B DiT, attention $run"; grep -E "fused|rror" "$OUT/logs/dit13b-$run.log" | tail -2
    done
elif [ "$mode" = s31e ]; then
    gluon_attn_tests 130
    timeout 60 python3 scripts/attn_probe.py --shapes 1.3b --cache /tmp/probe-cache > "$OUT/logs/probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/probe.log" | tail -8
elif [ "$mode" = s36d ]; then
    timeout 110 python3 -m pytest -q -p no:cacheprovider --timeout 100 --tb=short -m gpu \
        tests/unit/kernels/test_adaln_gluon.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -16
    timeout $((250 - SECONDS)) python3 -m models.bench_dit --sizes 1.3b --reps 2 --no-checks --no-floor --graphs \
        --variants sagesla/w8a8/fused --ab-env TURBOVID_WORKER__NORM_KERNEL=triton,auto > "$OUT/logs/ab-1.3b.log" 2>&1
    echo "== 1.3b DiT per NFE, residual norm kernel A/B"; grep -E "^\{|rror" "$OUT/logs/ab-1.3b.log" | cut -c1-220 | tail -6
elif [ "$mode" = s36c ]; then
    timeout 90 python3 scripts/norm_probe.py > "$OUT/logs/norm_probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/norm_probe.log" | cut -c1-700 | tail -8
    timeout 100 python3 -m pytest -q -p no:cacheprovider --timeout 90 --tb=short -m gpu \
        tests/unit/kernels/test_adaln_gluon.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -16
    for size in 14b 1.3b; do
        timeout $([ $size = 14b ] && echo 220 || echo 110) python3 -m models.bench_dit --sizes $size --reps 2 --no-checks \
            --no-floor --graphs --variants sagesla/w8a8/fused --ab-env TURBOVID_WORKER__NORM_KERNEL=triton,auto \
            > "$OUT/logs/ab-$size.log" 2>&1
        echo "== $size DiT per NFE, residual norm kernel A/B"; grep -E "^\{|rror|Gluon residual" "$OUT/logs/ab-$size.log" \
            | cut -c1-220 | tail -6
    done
elif [ "$mode" = s36a ]; then
    timeout 120 python3 scripts/prep_probe.py > "$OUT/logs/prep_probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/prep_probe.log" | cut -c1-400 | tail -12
    for size in 14b 1.3b; do
        timeout $([ $size = 14b ] && echo 200 || echo 100) python3 -m models.bench_dit --sizes $size --reps 3 --no-checks \
            --no-floor --graphs --variants sagesla/w8a8/fused --ab-env TURBOVID_WORKER__SAGESLA_PREP=split,fused \
            > "$OUT/logs/ab-$size.log" 2>&1
        echo "== $size DiT per NFE, K pass A/B"; grep -E "^\{|rror" "$OUT/logs/ab-$size.log" | cut -c1-220 | tail -5
    done
    timeout 110 python3 -m pytest -q -p no:cacheprovider --timeout 100 --tb=short -m gpu \
        tests/unit/kernels/test_sagesla_prep.py tests/unit/kernels/test_sagesla_kernels.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -16
elif [ "$mode" = s35d ]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 120 --tb=short -m gpu tests/unit/models/test_vae_gpu.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -12
    timeout 100 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --skip-decode --i2v --no-reference \
        > "$OUT/logs/vae_i2v.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/logs/vae_i2v.log" | grep "i2v" | tail -2
elif [ "$mode" = s35c ]; then
    a14b shipped 3 240
    a14b threads16 3 $((535 - SECONDS)) encoder_threads=16
elif [ "$mode" = s35b ]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 120 --tb=short -m gpu tests/unit/models/test_vae_gpu.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -12
    timeout 150 python3 -m models.bench_vae --sizes 832x480,1280x720 --skip-encode --skip-decode --i2v \
        > "$OUT/logs/vae_i2v-new.log" 2>&1
    echo "== I2V condition encode, this tree"; grep -v "^W\|Warning\|warn" "$OUT/logs/vae_i2v-new.log" | grep "i2v" | tail -6
    a14b resident 3 260
    (cd "$OLD_SRC" && PYTHONPATH=/tmp/site:$OLD_SRC timeout 100 python3 -m models.bench_vae --sizes 832x480,1280x720 \
        --skip-encode --skip-decode --i2v --no-reference --rows steady) > "$OUT/logs/vae_i2v-old.log" 2>&1
    echo "== I2V condition encode, OLD_SRC"; grep -v "^W\|Warning\|warn" "$OUT/logs/vae_i2v-old.log" | grep "i2v" | tail -4
    left=$((535 - SECONDS))
    [ "$left" -gt 150 ] && a14b budget32 2 $((left - 5)) gpu_memory_gb=32
elif [ "$mode" = s35a ]; then
    a14b resident 3 280
    a14b budget32 2 250 gpu_memory_gb=32
elif [ "$mode" = s34d ]; then
    e2e13 150
    bench14 230 150
    left=$((535 - SECONDS))
    [ "$left" -gt 100 ] && timeout $((left - 5)) python3 -m models.bench_dit --sizes 14b --reps 1 --no-checks --no-floor \
        --variants sagesla/w8a8/fused --profile "$OUT/logs/dit_profile" > "$OUT/logs/dit14_prof.log" 2>&1
    grep -E "^\{|rror" "$OUT/logs/dit14_prof.log" | cut -c1-200 | tail -2
elif [ "$mode" = s34c ]; then
    timeout 150 python3 scripts/conv_gluon_probe.py --forms wait0,aregs0 > "$OUT/logs/conv_probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/conv_probe.log" | grep -v '"ok": true' | cut -c1-700 | tail -12
    grep -c '"ok": true' "$OUT/logs/conv_probe.log"
    bench14 $((535 - SECONDS)) 220
elif [ "$mode" = s34b ]; then
    # the 1.3B DiT per NFE with this tree and OLD_SRC's in alternating processes (new, old, new, old), then the 1.3B
    # turbovid bench (per stage and whole job)
    for run in new-1 old-1 new-2 old-2; do
        tree=$PWD; [ "${run%-*}" = old ] && tree=$OLD_SRC
        limit=90; [ "$run" = new-1 ] && limit=150  # the first compiles the kernels
        (cd "$tree" && PYTHONPATH=/tmp/site:$tree timeout $limit python3 -m models.bench_dit --sizes 1.3b --reps 3 \
            --no-checks --no-floor --graphs --variants sagesla/w8a8/fused) > "$OUT/logs/dit-$run.log" 2>&1
        echo "== 1.3B DiT per NFE, $run"; grep -E "^\{|rror" "$OUT/logs/dit-$run.log" | cut -c1-200 | tail -2
    done
    turbovid_bench 200
    grep -rhE "precompile:|compiled .* at launch|warm-up done" "$OUT/logs/e2e"/worker*.log | cut -c1-200 | head -6
    # where the time goes now: the 480p decode's and the 1.3B forward's top CUDA kernels, if time is left
    left=$((535 - SECONDS))
    [ "$left" -gt 50 ] && timeout $((left < 100 ? left - 5 : 95)) python3 -m models.bench_vae --sizes 832x480 --skip-encode \
        --no-reference --repeats 1 --rows "igemm 96+192" --profile "$OUT/logs/vae_profile.txt" > "$OUT/logs/vae.log" 2>&1
    left=$((535 - SECONDS))
    [ "$left" -gt 40 ] && timeout $((left - 5)) python3 -m models.bench_dit --sizes 1.3b --reps 1 --no-checks --no-floor \
        --variants sagesla/w8a8/fused --profile "$OUT/logs/dit_profile" > "$OUT/logs/dit_prof.log" 2>&1
    ls "$OUT/logs" | tr '\n' ' '
elif [ "$mode" = s34a ]; then
    # the Gluon conv's probe (it also ran an A-from-registers form then), then the 1.3B turbovid bench
    timeout 200 python3 scripts/conv_gluon_probe.py > "$OUT/logs/conv_probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/conv_probe.log" | grep -v '"ok": true' | cut -c1-420 | tail -14
    grep -c '"ok": true' "$OUT/logs/conv_probe.log"
    turbovid_bench $((530 - SECONDS))
elif [ "$mode" = s33e ]; then
    e2e13 200  # the Gluon conv at 96 and 192 channels; the recorded list has the 192-channel specializations
elif [ "$mode" = s33d ]; then
    # the whole 1.3B job through the real processes with each VAE conv kernel, alternating on one host (start + 3 jobs)
    for run in triton-1 auto-1 triton-2 auto-2; do
        limit=120; [ "$run" = triton-1 ] && limit=170  # the first run builds the weights
        timeout $limit python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 3 --no-restart --skip-stages \
            --start-timeout 110 --job-timeout 60 --worker-setting "conv_kernel=${run%-*}" --logs "$OUT/logs/e2e-$run" \
            > "$OUT/logs/bench-$run.log" 2>&1
        echo "== conv_kernel $run"; grep -E "start -> ready, fresh|POST->completed|first /|rror" "$OUT/logs/bench-$run.log" \
            | sed 's/->MP4 downloaded.*worker:/worker:/' | cut -c1-230 | head -5
        grep -hE "compiled .* at launch|Gluon conv|conv 96" "$OUT/logs/e2e-$run"/worker*.log | cut -c60-200 | head -3
    done
    timeout $((530 - SECONDS)) python3 scripts/conv_gluon_probe.py --decode 832x480 --reps 3 --decode-only \
        > "$OUT/logs/decode_ab.log" 2>&1
    grep -E "^\{|rror" "$OUT/logs/decode_ab.log" | cut -c1-600 | tail -3
elif [ "$mode" = s33c ]; then
    timeout 280 python3 scripts/conv_gluon_probe.py --decode 832x480 --reps 3 > "$OUT/logs/conv_probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/conv_probe.log" | grep -v '"ok": true' | cut -c1-420 | tail -22
    grep -c '"ok": true' "$OUT/logs/conv_probe.log"
    timeout 90 python3 -m pytest -q -p no:cacheprovider --timeout 80 --tb=line -m gpu tests/unit/kernels/test_conv3d_gluon.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-200 | head -8
    left=$((525 - SECONDS))
    [ "$left" -gt 130 ] && e2e13 "$left"  # the whole 1.3B job, if time is left
elif [ "$mode" = s33b ]; then
    timeout 260 python3 scripts/conv_gluon_probe.py --decode 832x480 --reps 3 > "$OUT/logs/conv_probe.log" 2>&1
    grep -v "Warn\|warn" "$OUT/logs/conv_probe.log" | cut -c1-400 | tail -26
    timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 100 --tb=line -m gpu tests/unit/kernels/test_conv3d_gluon.py \
        tests/unit/kernels/test_conv3d_igemm.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-200 | head -8
    left=$((525 - SECONDS))
    [ "$left" -gt 150 ] && e2e13 "$left"  # the whole 1.3B job, if time is left
elif [ "$mode" = s33a ]; then
    turbovid_bench 230
    grep -rhE "precompile:|compiled .* at launch|warm-up done" "$OUT/logs/e2e"/worker*.log | cut -c1-200 | head -6
    bench14 290 200
elif [ "$mode" = s32d ]; then
    timeout 80 python3 scripts/attn_probe.py --cache /tmp/probe-cache > "$OUT/logs/attn_probe.log" 2>&1
    grep -E "^==|kernel|whole|rror" "$OUT/logs/attn_probe.log" | cut -c1-200
    timeout 100 python3 -m pytest -q -p no:cacheprovider --timeout 60 --tb=short -m gpu \
        tests/unit/kernels/test_sagesla_gluon.py -k "matches" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -12
    timeout 80 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --no-floor --graphs \
        --variants sagesla/w8a8/fused --ab-env TURBOVID_SAGESLA_P_SMEM=0,1 > "$OUT/logs/ab-13b.log" 2>&1
    echo "== 1.3B DiT per NFE, P through smem 0 / 1"; grep -E "^\{|rror" "$OUT/logs/ab-13b.log" | cut -c1-200 | tail -4
    turbovid_bench 230
    grep -rhE "precompile:|compiled .* at launch|warm-up done|SageSLA attention on|quantization" \
        "$OUT/logs/e2e"/worker*.log | cut -c1-200 | head -8
elif [ "$mode" = s32c ]; then
    timeout 70 python3 scripts/quant_probe.py > "$OUT/logs/quant_probe.log" 2>&1; grep -v "Warn\|warn" "$OUT/logs/quant_probe.log"
    timeout 100 python3 -m pytest -q -p no:cacheprovider --timeout 60 --tb=short -m gpu tests/unit/kernels/test_int8_quant_gluon.py \
        tests/unit/kernels/test_sagesla_gluon.py -k "public_call or gluon_codes" > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  |WARNING" "$OUT/logs/tests.log" | cut -c1-260 | head -16
    timeout 330 python3 -m models.bench_dit --sizes 14b --reps 3 --no-checks --no-floor --graphs --variants sagesla/w8a8/fused \
        --ab-env TURBOVID_WORKER__QUANT_KERNEL=triton,auto --ab-env TURBOVID_WORKER__SAGESLA_KERNEL=triton,auto \
        > "$OUT/logs/ab-14b.log" 2>&1
    echo "== 14B DiT per NFE, quantization then attention kernel A/B"; grep -E "^\{|rror" "$OUT/logs/ab-14b.log" | cut -c1-220 | tail -8
elif [ "$mode" = s32b ]; then
    timeout 60 python3 scripts/quant_probe.py > "$OUT/logs/quant_probe.log" 2>&1; grep -v "Warn\|warn" "$OUT/logs/quant_probe.log"
    timeout 170 python3 -m pytest -q -p no:cacheprovider --timeout 100 --tb=short -m gpu \
        tests/unit/kernels/test_int8_quant_gluon.py tests/unit/kernels/test_int8_quant.py \
        tests/unit/kernels/test_sagesla_gluon.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Timeout|^E  " "$OUT/logs/tests.log" | cut -c1-260 | head -16
    for size in 1.3b 14b; do
        timeout 150 python3 -m models.bench_dit --sizes $size --reps 3 --no-checks --no-floor --graphs \
            --variants sagesla/w8a8/fused --ab-env TURBOVID_WORKER__QUANT_KERNEL=triton,auto > "$OUT/logs/ab-$size.log" 2>&1
        echo "== $size DiT per NFE, quantization kernel A/B"; grep -E "^\{|rror" "$OUT/logs/ab-$size.log" | cut -c1-220 | tail -5
    done
elif [ "$mode" = s32a ]; then
    turbovid_bench 300
    grep -rhE "precompile:|compiled .* at launch|warm-up done|SageSLA attention on|Gluon SageSLA" \
        "$OUT/logs/e2e"/worker*.log | cut -c1-200 | head -8
    for kern in triton auto; do
        TURBOVID_WORKER__SAGESLA_KERNEL=$kern timeout 120 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks \
            --graphs --variants sagesla/w8a8/fused > "$OUT/logs/dit14b-$kern.log" 2>&1
        echo "== 14B DiT, attention kernel $kern"; grep -E "fused|rror" "$OUT/logs/dit14b-$kern.log" | tail -2
    done
elif [ "$mode" = s26e ]; then
    timeout 150 python3 -m cli.main bench --weights "$W" --text-encoder small --skip-e2e --skip-stages \
        > "$OUT/logs/weights.log" 2>&1; tail -2 "$OUT/logs/weights.log"
    timeout 300 python3 scripts/generate_gaps.py --weights "$W" > "$OUT/logs/gaps.log" 2>&1
    grep -v "USDT\|Warning\|warn" "$OUT/logs/gaps.log" | tail -22
elif [ "$mode" = s25c ]; then
    timeout 230 python3 -m pytest -q -p no:cacheprovider --timeout 220 -m gpu tests/unit/kernels/test_adaln.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    timeout 150 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 2 --no-restart --skip-stages \
        --start-timeout 120 --job-timeout 60 --logs "$OUT/logs/e2e13" > "$OUT/logs/bench13.log" 2>&1
    echo "== 1.3B 480p"; grep -E "start -> ready, fresh|POST->completed|rror" "$OUT/logs/bench13.log" | cut -c1-250 | head -4
    grep -hE "precompile:|compiled .* at launch|warm-up done" "$OUT/logs/e2e13"/worker.log | cut -c1-200 | head -3
    # the 14B run starts from the 1.3B run's choices, so its saved file holds both models' (the ones shipped)
    cp "$OUT"/logs/e2e13/NVIDIA_H200-cc90-*.json worker/autotune/NVIDIA_H200-cc90.json
    timeout 200 python3 -m cli.main bench --model wan2.1-t2v-14b --size 1280x720 \
        --weights /tmp/turbovid-bench-weights-14b --text-encoder small --jobs 1 --no-restart --skip-stages \
        --start-timeout 170 --job-timeout 60 --logs "$OUT/logs/e2e14" > "$OUT/logs/bench14.log" 2>&1
    echo "== 14B 720p"; grep -E "weights ready|start -> ready, fresh|POST->completed|rror" "$OUT/logs/bench14.log" | cut -c1-250 | head -4
    grep -hE "precompile:|compiled .* at launch|warm-up done" "$OUT/logs/e2e14"/worker.log | cut -c1-200 | head -3
    mkdir -p "$OUT/ship" && cp "$OUT"/logs/e2e14/NVIDIA_H200-cc90-*.json "$OUT/ship/" \
        && cp "$OUT"/logs/e2e13/kernels-*.json "$OUT"/logs/e2e14/kernels-*.json "$OUT/ship/"; ls "$OUT/ship"
elif [ "$mode" = s25d ]; then
    turbovid_bench 400
    grep -rhE "precompile:|compiled .* at launch|warm-up done|another version of its source" "$OUT/logs/e2e"/worker.log \
        | cut -c1-200 | head -6
    mkdir -p "$OUT/ship" && cp "$OUT"/logs/e2e/NVIDIA_H200-cc90-*.json "$OUT"/logs/e2e/kernels-*.json "$OUT/ship/"
elif [ "$mode" = s25e ]; then
    bench14 230 170
elif [ "$mode" = s25x2a ]; then
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    echo "== sequence parallel, 14B 720p, 2 ranks vs 1, int8 exchange"
    sp14b 290 4
    timeout 260 torchrun --nproc-per-node 2 -m models.bench_a14b --ranks --exchange bf16,int8 > "$OUT/logs/a14b_ranks.log" 2>&1
    grep "^{" "$OUT/logs/a14b_ranks.log"; grep -v "^W\|Warning\|warn\|^{" "$OUT/logs/a14b_ranks.log" | tail -4
elif [ "$mode" = s25x2b ]; then
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    for gpus in 2 1; do
        timeout 250 python3 -m cli.main bench --model wan2.1-t2v-14b --size 1280x720 \
            --weights /tmp/turbovid-bench-weights-14b --text-encoder small --jobs 2 --no-restart --skip-stages \
            --start-timeout 200 --job-timeout 60 --worker-setting gpus=$gpus --logs "$OUT/logs/e2e-$gpus" \
            > "$OUT/logs/bench-$gpus.log" 2>&1
        echo "== 14B 720p worker, gpus=$gpus"
        grep -E "start -> ready, fresh|POST->completed|peak|rror" "$OUT/logs/bench-$gpus.log" | cut -c1-260 | head -4
        grep -hE "precompile:|ranks|warm-up done" "$OUT/logs/e2e-$gpus"/worker.log | cut -c1-200 | head -4
    done
elif [ "$mode" = s24f ]; then
    for m in "wan2.1-t2v-1.3b 832x480 $W" "wan2.1-t2v-14b 1280x720 /tmp/turbovid-bench-weights-14b"; do
        set -- $m
        for procs in true false; do
            timeout 150 python3 -m cli.main bench --model "$1" --size "$2" --weights "$3" --text-encoder small --jobs 2 \
                --no-restart --skip-stages --start-timeout 120 --job-timeout 60 \
                --worker-setting precompile_in_processes=$procs --logs "$OUT/logs/e2e-$1-$procs" \
                > "$OUT/logs/bench-$1-$procs.log" 2>&1
            echo "== $1 precompile_in_processes=$procs"
            grep -E "start -> ready, fresh|POST->completed" "$OUT/logs/bench-$1-$procs.log" | cut -c1-200 | head -3
            grep -hE "precompile:|loaded:|warm-up done|compiled .* at launch" "$OUT/logs/e2e-$1-$procs"/worker.log | cut -c1-230
        done
    done
elif [ "$mode" = s24e ]; then
    timeout 420 python3 scripts/warm_start_inprocess.py --model wan2.2-i2v-a14b --jobs 2 --out "$OUT/logs/a14b" \
        > "$OUT/logs/a14b.log" 2>&1
    grep -E "^\{|precompile:|compiled .* at launch|warm-up|Error|rror:" "$OUT/logs/a14b.log" | cut -c1-400 | tail -12
elif [ "$mode" = s24d ]; then
    timeout 300 python3 -m cli.main bench --model wan2.1-t2v-14b --size 1280x720 --weights /tmp/turbovid-bench-weights-14b \
        --text-encoder small --jobs 2 --no-restart --skip-stages --start-timeout 240 --job-timeout 60 \
        --logs "$OUT/logs/e2e14" > "$OUT/logs/bench14.log" 2>&1
    grep -E "weights ready|start -> ready|POST->completed|first / second|peak|rror" "$OUT/logs/bench14.log" | cut -c1-300 | head -12
    grep -hE "precompile:|compiled .* at launch|warm-up|loaded" "$OUT"/logs/e2e14/*worker*.log | cut -c1-220 | head -12
    timeout 150 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 2 --no-restart --skip-stages \
        --start-timeout 90 --job-timeout 30 --logs "$OUT/logs/e2e" > "$OUT/logs/bench.log" 2>&1
    grep -E "start -> ready|POST->completed|first / second" "$OUT/logs/bench.log" | head -4
    grep -hE "precompile:|compiled .* at launch|warm-up done|another version" "$OUT"/logs/e2e/*worker*.log | cut -c1-200
elif [ "$mode" = s24c ]; then
    rm -f worker/autotune/*.kernels.json  # this copy only: the 14B worker records a list of its own kernels
    timeout 545 python3 -m cli.main bench --model wan2.1-t2v-14b --size 1280x720 --weights /tmp/turbovid-bench-weights-14b \
        --text-encoder small --jobs 2 --no-restart --skip-stages --start-timeout 420 --job-timeout 90 \
        --logs "$OUT/logs/e2e" > "$OUT/logs/bench.log" 2>&1
    grep -E "weights ready|start -> ready|POST->completed|first / second|peak|rror" "$OUT/logs/bench.log" | cut -c1-300 | head -12
    grep -hE "precompile:|compiled .* at launch|warm-up|loaded|tuned|choices" "$OUT"/logs/e2e/*worker*.log | cut -c1-220 | head -20
elif [ "$mode" = s24b ]; then
    timeout 100 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 2 --no-restart --skip-stages \
        --start-timeout 90 --job-timeout 30 --logs "$OUT/logs/e2e" > "$OUT/logs/bench.log" 2>&1
    grep -E "start -> ready|POST->completed|first / second" "$OUT/logs/bench.log" | head -4
    grep -hE "precompile:|compiled .* at launch|warm-up done|another version" "$OUT"/logs/e2e/*worker*.log | cut -c1-200
    timeout 280 python3 -m pytest -q -p no:cacheprovider --timeout 135 -m gpu tests/unit/kernels/test_adaln.py \
        -k every_config > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    timeout 200 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks --variants sagesla/w8a8/fused,sagesla/w8a8/split \
        > "$OUT/logs/dit14b.log" 2>&1
    grep -A6 "per-NFE" "$OUT/logs/dit14b.log"
elif [ "$mode" = s23f ]; then
    timeout 70 python3 -m pytest -q -p no:cacheprovider --timeout 65 -m gpu tests/unit/kernels/test_adaln.py -k residual \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error|Timeout" "$OUT/logs/tests.log" | tail -6
    timeout 90 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 2 --no-restart --skip-stages \
        --start-timeout 80 --job-timeout 30 --logs "$OUT/logs/e2e" > "$OUT/logs/bench.log" 2>&1
    grep -E "start -> ready|POST->completed" "$OUT/logs/bench.log" | head -3
    grep -hE "precompile:|compiled .* at launch|warm-up done|another version" "$OUT"/logs/e2e/*worker*.log | cut -c1-200
    timeout 100 python3 scripts/decode_in_pipeline.py --weights "$W" --reps 2 2>&1 | grep -v "^W\|Warn\|warn\|USDT" | tail -16
elif [ "$mode" = s23e ]; then
    timeout 100 python3 -m pytest -q -p no:cacheprovider --timeout 90 -m gpu tests/unit/kernels/test_adaln.py \
        tests/unit/worker/test_precompile.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
    timeout 80 python3 -m kernels.bench_norms --residual > "$OUT/logs/norms.log" 2>&1; grep -v "^W\|Warn" "$OUT/logs/norms.log" | tail -12
    timeout 100 python3 -m models.bench_dit --sizes 1.3b --reps 3 --no-checks --graphs \
        --variants sagesla/w8a8/fused,sagesla/w8a8/split > "$OUT/logs/dit13b.log" 2>&1
    grep -A8 "per-NFE" "$OUT/logs/dit13b.log"
    timeout 130 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks --variants sagesla/w8a8/fused,sagesla/w8a8/split \
        > "$OUT/logs/dit14b.log" 2>&1
    grep -A6 "per-NFE" "$OUT/logs/dit14b.log"
    turbovid_bench 260
    grep -rh "another version of its source\|precompile:\|compiled .* at launch" "$OUT/logs/e2e"/*.log | cut -c1-200 | head -6
elif [ "$mode" = s23d ]; then
    timeout 300 python3 scripts/decode_in_pipeline.py --weights "$W" --reps 3 2>&1 | grep -v "^W\|Warn\|warn\|USDT" | tail -24
elif [ "$mode" = s23c ]; then
    timeout 200 python3 scripts/decode_contention.py --size 832x480 --repeats 3 \
        --profile "none,x264 frame 8,worker sink (lazy open)" 2>&1 | grep -v "^W\|Warn" | tail -16
elif [ "$mode" = s23b ]; then
    timeout 90 python3 -m pytest -q -p no:cacheprovider --timeout 80 tests/unit/worker/test_precompile.py \
        > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
    timeout 120 python3 scripts/decode_contention.py --size 832x480 --repeats 3 2>&1 | grep -v "^W\|Warn" | tail -10
    timeout 200 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 3 --skip-stages \
        --start-timeout 150 --job-timeout 60 --logs "$OUT/logs/e2e" > "$OUT/logs/bench.log" 2>&1
    grep -E "start -> ready|POST->completed|first / second|restart" "$OUT/logs/bench.log" | head -8
    grep -hE "precompile|compiled .* at launch|warm-up done|loading pipeline|loaded:|warm-up t2v|video encoder|graph captured" \
        "$OUT"/logs/e2e/*worker*.log | cut -c1-200
elif [ "$mode" = s23a ]; then
    timeout 90 python3 -m pytest -q -p no:cacheprovider --timeout 80 tests/unit/worker/test_precompile.py \
        tests/unit/worker/test_warmup.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
    timeout 90 python3 scripts/decode_contention.py --size 832x480 --repeats 3 2>&1 | grep -v "^W\|Warn" | tail -8
    # fresh start A: no kernel list (none shipped); it records one
    timeout 200 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 2 --no-restart --skip-stages \
        --start-timeout 150 --job-timeout 60 --logs "$OUT/logs/e2eA" > "$OUT/logs/benchA.log" 2>&1
    grep -E "start -> ready|POST->completed" "$OUT/logs/benchA.log" | head -4
    grep -hE "precompile|compiled .* at launch|warm-up done|loading pipeline|warm-up t2v" "$OUT"/logs/e2eA/*worker*.log | cut -c1-220
    ls "$OUT/logs/e2eA" | grep kernels
    cp "$OUT"/logs/e2eA/kernels-*.json worker/autotune/NVIDIA_H200-cc90.kernels.json || echo "no kernel list recorded"
    # fresh start B: the recorded list shipped; then a restart on the warm cache
    timeout 200 python3 -m cli.main bench --weights "$W" --text-encoder small --jobs 3 --skip-stages \
        --start-timeout 150 --job-timeout 60 --logs "$OUT/logs/e2eB" > "$OUT/logs/benchB.log" 2>&1
    grep -E "start -> ready|POST->completed|first / second|restart" "$OUT/logs/benchB.log" | head -8
    grep -hE "precompile|compiled .* at launch|warm-up done|loading pipeline|warm-up t2v" "$OUT"/logs/e2eB/*worker*.log | cut -c1-220
elif [ "$mode" = s22e ]; then
    timeout 60 python3 -m pytest -q -p no:cacheprovider --timeout 50 tests/unit/kernels/test_int8_quant.py \
        tests/unit/worker/test_encode.py > "$OUT/logs/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/logs/tests.log" | tail -6
    turbovid_bench 240
    grep -rh "another version of its source" "$OUT/logs/e2e" | cut -c1-200 | head -5
elif [ "$mode" = s21e ]; then
    timeout 300 python3 -m models.bench_a14b --size a14b --budget-gb 32 > "$OUT/logs/a14b.log" 2>&1
    grep -v "^W\|Warning" "$OUT/logs/a14b.log" | grep -v "denoise [0-9]\|decode [0-9]\|encode [0-9]" | tail -8
elif [ "$mode" = s20f ]; then
    # turbovid bench with session 20's defaults (192-wide igemm blocks, the re-shipped conv choices): fresh start,
    # whole job through the real processes, per-stage table; any shipped choice the worker could not use
    turbovid_bench 400
    grep -rh "another version of its source" "$OUT/logs/e2e" | cut -c1-200 | head -5
elif [ "$mode" = s19e ]; then
    turbovid_bench 250
    timeout 70 python3 -m pytest -q -p no:cacheprovider --timeout 60 tests/unit/kernels/test_conv3d_igemm.py \
        tests/unit/models/test_vae_gpu.py > "$OUT/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/tests.log" | tail -8
    timeout 105 python3 -m models.bench_vae --sizes 832x480 --skip-encode --igemm 96,96+192 > "$OUT/vae480.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/vae480.log" | grep -A14 "^size"
    timeout 75 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference --igemm 96,96+192 \
        > "$OUT/vae720.log" 2>&1; grep -v "^W\|Warning\|warn" "$OUT/vae720.log" | grep -A12 "^size"
elif [ "$mode" = s18d ]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider --timeout 140 tests/unit/models/test_cuda_graphs.py \
        tests/unit/models/test_vae_gpu.py tests/unit/kernels/test_pixel_interleave.py -k "gpu or graph or scatters" \
        > "$OUT/tests.log" 2>&1; grep -E "^FAILED|passed|failed|Error" "$OUT/tests.log" | tail -8
    timeout 120 python3 -m models.bench_dit --sizes 1.3b --reps 5 --no-checks --graphs --variants sagesla/w8a8/fused \
        > "$OUT/dit13b.log" 2>&1; grep "^{" "$OUT/dit13b.log"
    turbovid_bench 280
elif [ "$mode" = s18e ]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider --timeout 110 tests/unit/kernels/test_conv_head.py \
        tests/unit/models/test_vae_gpu.py -k "gpu or gather" > "$OUT/tests.log" 2>&1
    grep -E "^FAILED|passed|failed|Error" "$OUT/tests.log" | tail -6
    timeout 100 python3 -m models.bench_vae --sizes 832x480 --skip-encode > "$OUT/vae480.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/vae480.log" | grep -A12 "^size"
    timeout 90 python3 -m models.bench_vae --sizes 1280x720 --skip-encode --no-reference > "$OUT/vae720.log" 2>&1
    grep -v "^W\|Warning\|warn" "$OUT/vae720.log" | grep -A12 "^size"
    turbovid_bench 260
    timeout 150 python3 -m models.bench_dit --sizes 14b --reps 2 --no-checks --graphs --variants sagesla/w8a8/fused \
        > "$OUT/dit14b.log" 2>&1; grep "^{" "$OUT/dit14b.log"
elif [ "$mode" = one ]; then
    # one short call: turbovid bench (2-layer umT5), then the fast-path GPU tests with what time is left
    timeout 230 python3 -m cli.main bench --weights "$W" --text-encoder small --reps 2 --jobs 3 \
        --start-timeout 150 --job-timeout 60 --out "$OUT/bench.json" --logs "$OUT/e2e" 2>&1 \
        | tee -a "$OUT/$mode.log" | grep -v " INFO \|^INFO" | tail -45
    # -v: a line per test as it ends (a cold Triton cache makes the first ones slow; 50 s printed nothing)
    timeout 120 python3 -m pytest -v -m gpu -p no:cacheprovider --timeout 110 \
        tests/unit/models/test_pipeline_gpu.py tests/unit/models/test_vae_gpu.py \
        "tests/unit/kernels/test_w8a8_gpu.py::test_norm_int8_output_feeds_the_gemm_at_wan_shapes" \
        tests/unit/models/test_ops.py::test_cuda_fused_kernels_match_plain_pytorch 2>&1 | tee "$OUT/tests.log" | tail -15
elif [ "$mode" = tests ]; then
    # weights (GPU random init, disk writes) while the tests run
    (timeout 150 python3 -m cli.main bench --weights "$W" --text-encoder small --skip-e2e --skip-stages) \
        >"$OUT/e2e/weights.log" 2>&1 &
    wpid=$!
    timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 90 \
        tests/unit/models/test_ops.py::test_cuda_fused_kernels_match_plain_pytorch \
        tests/unit/models/test_pipeline_gpu.py \
        "tests/unit/kernels/test_w8a8_gpu.py::test_norm_int8_output_feeds_the_gemm_at_wan_shapes" \
        tests/unit/models/test_vae_gpu.py tests/unit/kernels/test_rmsnorm_silu.py 2>&1 | tee -a "$OUT/$mode.log" | tail -25
    timeout 60 python3 -m models.bench_vae --sizes 832x480,1280x720 --repeats 2 --skip-encode 2>&1 \
        | tee "$OUT/bench_vae.log" | tail -14
    timeout 80 python3 -m models.bench_dit --sizes 1.3b --reps 2 --budget-s 60 --no-checks \
        --variants dense/native/torch,sagesla/w8a8/fused,dense/native/fused 2>&1 | tee "$OUT/bench_dit.log" | tail -6
    wait $wpid; tail -3 "$OUT/e2e/weights.log"
    timeout 180 python3 -m cli.main bench --weights "$W" --text-encoder small --skip-stages --jobs 3 \
        --start-timeout 150 --out "$OUT/warm_start.json" --logs "$OUT/e2e" 2>&1 | tee "$OUT/warm_start.log" \
        | grep -v " INFO \|^INFO" | tail -25
else
    timeout 330 python3 -m cli.main bench --weights "$W" --reps 2 --jobs 3 --start-timeout 200 \
        --out "$OUT/bench.json" --logs "$OUT/e2e" 2>&1 | tee -a "$OUT/$mode.log" | grep -v " INFO \|^INFO" | tail -40
fi
