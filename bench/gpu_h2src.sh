#!/usr/bin/env bash
# Here, before a device `run` call: make .h2src (git-ignored, carried with `carry: [".h2src", ...]`) so that the call
# runs HEAD's commit while this checkout has edits in progress: .h2src/overlay = HEAD's version of every tracked
# file that differs in the working tree (bench/gpu_run.sh copies it over the tree it was sent), .h2src/COMMIT =
# HEAD's id (the run command exports PEDAGLE_COMMIT=$(cat .h2src/COMMIT): the tree travels without .git).
# Untracked files still travel as they are; they are listed.
#
#   bash bench/gpu_h2src.sh [REPO]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
git check-ignore -q .h2src/COMMIT || { echo ".h2src is not git-ignored here: add it to .gitignore first" >&2; exit 2; }
rm -rf .h2src/overlay; mkdir -p .h2src/overlay
n=0
while IFS= read -r -d '' f; do
  if git cat-file -e "HEAD:$f" 2>/dev/null; then
    mkdir -p ".h2src/overlay/$(dirname "$f")"; git show "HEAD:$f" > ".h2src/overlay/$f"; n=$((n + 1))
  fi
done < <(git diff -z --name-only HEAD)
git rev-parse HEAD > .h2src/COMMIT
echo "overlay: $n file(s); commit $(cat .h2src/COMMIT); untracked: $(git ls-files -o --exclude-standard | tr '\n' ' ')"
