#!/usr/bin/env bash
# cpic as a new user gets it, in virtual environments made from nothing (no system site
# packages, nothing pre-installed):
#   1. `make demo` (the README's first command) in a new venv: it must install all the demo needs;
#   2. `python -m build`: a wheel and an sdist, built without deprecation warnings and checked to
#      hold every source file and the README;
#   3. each artifact installed (dependencies resolved by pip from its metadata) in a new venv
#      holding only the CPU torch, then `cpic --version` and a short demo; without the plot
#      extra the demo must stop at once, naming `pip install 'cpic[plot]'`, and write nothing.
# Run by CI (.ci/run) and by hand: bash .ci/fresh_install.sh   (about 5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
unset PYTHONPATH  # the venvs must import the cpic they installed, never this tree's src/
PYTHON=${PYTHON:-python3}
TORCH=torch==2.13.0  # the CPU build, as in the Makefile; an unpinned torch would pull a CUDA one
DEMO=(--count 40 --epochs 2 --no-scale)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/cpic/_version.py)
work=$(mktemp -d "${TMPDIR:-/tmp}/cpic-fresh.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$PWD

step() { printf '\n== %s (at %d s)\n' "$1" "$SECONDS"; }
die() { echo "fresh_install: $*" >&2; exit 1; }

fresh_venv() {  # a venv with the CPU torch only
    "$PYTHON" -m venv "$work/$1"
    "$work/$1/bin/python" -m pip install --quiet "$TORCH"
}

demo_writes_figures() {  # venv name, output folder
    (cd "$work" && "$work/$1/bin/cpic" demo "${DEMO[@]}" --out "$2")
    for figure in slices learning_curve; do
        [ -s "$2/$figure.png" ] || die "$1: the demo wrote no $2/$figure.png"
    done
}

install_and_run() {  # venv name, artifact
    local venv=$1 artifact=$2
    "$work/$venv/bin/python" -m pip install --quiet "$artifact"
    [ "$(cd "$work" && "$work/$venv/bin/cpic" --version)" = "cpic $VERSION" ] || die "$venv: wrong cpic --version"
    # without the plot extra: refused before any work, nothing written
    set +e
    message=$(cd "$work" && "$work/$venv/bin/cpic" demo "${DEMO[@]}" --out "$work/$venv-refused" 2>&1)
    code=$?
    set -e
    [ "$code" = 2 ] || die "$venv: demo without matplotlib exited $code: $message"
    [[ $message == *"pip install 'cpic[plot]'"* ]] || die "$venv: unexpected message: $message"
    [ ! -e "$work/$venv-refused" ] || die "$venv: the refused demo wrote $work/$venv-refused"
    echo "without matplotlib: $message"
    "$work/$venv/bin/python" -m pip install --quiet "$artifact[plot]"
    demo_writes_figures "$venv" "$work/$venv-demo"
}

step "make demo in a fresh venv"
"$PYTHON" -m venv "$work/editable"
make --no-print-directory demo PYTHON="$work/editable/bin/python" DEMO_ARGS="${DEMO[*]} --out $work/editable-demo"
for figure in slices learning_curve; do
    [ -s "$work/editable-demo/$figure.png" ] || die "make demo wrote no $figure.png"
done

step "python -m build"
"$work/editable/bin/python" -m pip install --quiet build
"$work/editable/bin/python" -m build --outdir "$work/dist" "$root" > "$work/build.log" 2>&1 \
    || { cat "$work/build.log"; die "python -m build failed"; }
! grep -i "deprecated" "$work/build.log" || die "python -m build warns of a deprecated setting (above)"
wheel=$(ls "$work"/dist/cpic-"$VERSION"-*.whl)
sdist=$(ls "$work"/dist/cpic-"$VERSION".tar.gz)
echo "built $(basename "$wheel") and $(basename "$sdist")"
sources=$(git ls-files 'src/cpic/*.py')
[ -n "$sources" ] || die "no tracked sources under src/cpic"
tar -tzf "$sdist" | sed "s|^cpic-$VERSION/||" | sort > "$work/sdist.txt"
"$work/editable/bin/python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | sort > "$work/wheel.txt"
for file in README.md pyproject.toml $sources; do
    grep -qxF "$file" "$work/sdist.txt" || die "the sdist lacks $file"
done
for file in $sources; do
    grep -qxF "${file#src/}" "$work/wheel.txt" || die "the wheel lacks ${file#src/}"
done
echo "sdist and wheel hold README.md, pyproject.toml and the $(echo "$sources" | wc -l) modules of src/cpic"

step "the wheel in a fresh venv"
fresh_venv wheel
install_and_run wheel "$wheel"

step "the sdist in a fresh venv"
fresh_venv sdist
install_and_run sdist "$sdist"

step "fresh installs passed"
