#!/usr/bin/env bash
# Builds the native extension and installs it with the pip of a virtualenv:
#
#     native/build.sh .venv/bin        # PGO=0 in the environment: a plain release build
#
# The code is compiled for this machine's CPU (`-Ctarget-cpu=native`): the extension is built where
# it runs. TARGET_CPU=x86-64-v2 (or another LLVM CPU name) builds one that runs on other machines.
#
# The build is profile-guided (PGO) when LLVM's profile tool can be had from rustup: an instrumented
# build parses a generated fleet and the corpus of real Exim logs beside the repository, and the final
# build is laid out for the branches and calls that run took. Without the tool the build is plain: the
# same behaviour, a little slower. `trackdelivery_native.BUILD` says which one was installed.
set -euo pipefail

bin=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
cpu="-Ctarget-cpu=${TARGET_CPU:-native}"
plain() { RUSTFLAGS="$cpu" TRACKDELIVERY_NATIVE_BUILD=release "$bin/pip" install -q "$repo/native"; }

if [ "${PGO:-1}" = 0 ]; then
    plain
    exit
fi
find_profdata() { ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1 || true; }
profdata=$(find_profdata)
if [ -z "$profdata" ] && command -v rustup >/dev/null; then
    rustup component add llvm-tools >/dev/null 2>&1 || true
    profdata=$(find_profdata)
fi
if [ -z "$profdata" ]; then
    echo "native: no llvm-profdata (rustup component add llvm-tools): building without PGO" >&2
    plain
    exit
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "native: profile-guided build (instrumented build, training run, optimised build)" >&2
RUSTFLAGS="$cpu -Cprofile-generate=$work/raw" CARGO_TARGET_DIR="$repo/native/target/pgo-generate" \
    TRACKDELIVERY_NATIVE_BUILD=instrumented "$bin/pip" install -q "$repo/native"

# the training run: both outputs over a generated fleet (another seed than bench/parse.py's log) and
# over the real logs of the corpus, unusual lines included
"$bin/python" -m trackdelivery generate --servers 2 --messages 30000 --seed 7 --out "$work/fleet" >/dev/null 2>&1
corpus=()
if [ -d "$repo/../shared/corpus" ]; then
    while IFS= read -r -d '' file; do
        corpus+=("$file")
    done < <(find "$repo/../shared/corpus" -type f ! -name '*.md' -print0 | sort -z)
fi
for output in events lines; do
    "$bin/python" -m trackdelivery parse --engine native --output "$output" "$work"/fleet/*/exim_mainlog >/dev/null 2>&1
    if [ ${#corpus[@]} -gt 0 ]; then
        # a corpus file the command refuses (none should be) costs this run, not the build
        "$bin/python" -m trackdelivery parse --engine native --output "$output" "${corpus[@]}" >/dev/null 2>&1 ||
            echo "native: the training run over the corpus failed (--output $output)" >&2
    fi
done

"$profdata" merge -o "$work/merged.profdata" "$work/raw"
RUSTFLAGS="$cpu -Cprofile-use=$work/merged.profdata" TRACKDELIVERY_NATIVE_BUILD=pgo "$bin/pip" install -q "$repo/native"
