#!/usr/bin/env bash
# The CPU backend's aarch64 kernels (NEON `sdot`) built for aarch64 and run under qemu-user:
# the dot products against the scalar reference, the whole quantized layer, the spin pool.
# Once with qemu's default CPU (which has the dot-product extension), once as a Cortex-A53
# (no dotprod: the run-time choice must fall back to the scalar kernel). Not part of `.ci/run`
# (it builds the crate a second time, ~8 minutes on 2 cores); run it where the kernels change.
# Needs: apt-get install qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
cargo test --locked --target aarch64-unknown-linux-gnu --lib -- backend::cpu::quant backend::cpu::spin_pool
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu cortex-a53 -L /usr/aarch64-linux-gnu"
cargo test --locked --target aarch64-unknown-linux-gnu --lib -- backend::cpu::quant::tests::layer
