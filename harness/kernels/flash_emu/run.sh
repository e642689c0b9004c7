#!/usr/bin/env bash
# Compile flash.cu's kernels for the CPU (emu.h) and check them against a float64 reference:
#   harness/kernels/flash_emu/run.sh [case index]
set -e
cd "$(dirname "$0")"
g++ -std=c++20 -O2 -pthread -fno-strict-aliasing -Wno-unknown-pragmas -DFLASH_EMU main.cpp -o "${TMPDIR:-/tmp}/flash_emu"
exec "${TMPDIR:-/tmp}/flash_emu" "$@"
