#!/usr/bin/env bash
# A one-engine GPU kit cut from the `both` kit of ../shared/gpu-carry (vLLM 0.26 + SGLang 0.5.17), so that a device
# session that needs one engine sends fewer pieces (each `run` call carries the whole checkout beside one piece,
# 64 MiB in all): SGLang alone is 91 MB, 4 pieces of 23 MB beside a 40.6 MB checkout, against 7 for `both`.
#
#   bash bench/gpu_kit_subset.sh BOTH_KIT OUT_KIT sglang|vllm [PIECES]
#
# BOTH_KIT: a kit directory (bin/ with gpu_assemble.sh, BUNDLE.sha256, PIECES.sha256; p00, p01, ... with
# bundle.tar.NN). OUT_KIT gets the same layout: the bundle's members of that engine (10-1x: vLLM, 20-2x: SGLang)
# and their CONTENTS.sha256 lines, split into PIECES (default 4) pieces, OPTION set, checksums written. Carry it
# as .gpucarry/NAME/bin + .gpucarry/NAME/pNN (bench/gpu_run.sh finds it there).
set -euo pipefail
SRC=${1:?BOTH_KIT}; DST=${2:?OUT_KIT}; ENGINE=${3:?sglang|vllm}; N=${4:-4}
case "$ENGINE" in
  vllm) pat='^1[0-9]-' ;;
  sglang) pat='^2[0-9]-' ;;
  *) echo "engine: $ENGINE; expected sglang or vllm" >&2; exit 2 ;;
esac
[ -f "$SRC/bin/gpu_assemble.sh" ] || { echo "$SRC/bin/gpu_assemble.sh: missing (not a kit directory)" >&2; exit 2; }
[ -e "$DST" ] && { echo "$DST exists; give a new directory" >&2; exit 2; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cat "$SRC"/p[0-9][0-9]/bundle.tar.[0-9][0-9] > "$W/bundle.tar"
(cd "$W" && sha256sum -c --quiet "$SRC/bin/BUNDLE.sha256") || { echo "$SRC: bundle checksum mismatch" >&2; exit 1; }
mkdir "$W/all" "$W/sub"
tar -xf "$W/bundle.tar" -C "$W/all"
members=$(cd "$W/all" && ls | grep -E "$pat" || true)
[ -n "$members" ] || { echo "$SRC: no $ENGINE members in the bundle" >&2; exit 1; }
for m in $members; do cp "$W/all/$m" "$W/sub/"; grep -E "  (\./)?$m\$" "$W/all/CONTENTS.sha256" >> "$W/sub/CONTENTS.sha256"; done
(cd "$W/sub" && sha256sum -c --quiet CONTENTS.sha256)
(cd "$W/sub" && tar -cf "$W/sub.tar" CONTENTS.sha256 $members)
mkdir -p "$DST/bin" && cp "$SRC/bin/gpu_assemble.sh" "$DST/bin/" && echo "$ENGINE" > "$DST/bin/OPTION"
(cd "$W" && cp sub.tar bundle.tar && sha256sum bundle.tar > "$DST/bin/BUNDLE.sha256")
(cd "$W" && split -n "$N" -d sub.tar bundle.tar. && sha256sum bundle.tar.[0-9][0-9] > "$DST/bin/PIECES.sha256")
for f in "$W"/bundle.tar.[0-9][0-9]; do i=${f##*.}; mkdir -p "$DST/p$i"; mv "$f" "$DST/p$i/"; done
echo "$DST: $ENGINE kit, $(ls -d "$DST"/p[0-9][0-9] | wc -l) pieces of $(du -b "$DST/p00/bundle.tar.00" | cut -f1) bytes:"
echo "  $members" | tr '\n' ' '; echo
