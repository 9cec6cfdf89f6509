#!/usr/bin/env bash
# Apply the SeCam patch series to a fresh copy of a Captum checkout and run Captum's tests.
#
# Usage: contrib/captum/apply_and_test.sh [CAPTUM_REPO] [REF]
#   CAPTUM_REPO  a Captum git repository (work tree or bare); default: the fetched mirror
#                /work/.mirror/pytorch+captum/repo
#   REF          the branch to patch; default: the repository's default branch (origin/HEAD,
#                Captum's "master"; its "main" branch stopped in Oct 2024)
# Environment:
#   TESTS        test paths to run (default: the SeCam tests and the generic harness, below)
#   BASELINE=0   skip the run of the same tests on the unpatched branch
#   KEEP=1       keep the temporary checkout (its path is printed)
#
# The tests run in a throwaway venv (python -m venv --system-site-packages) that adds only
# Captum's test-only dependency `parameterized`; the patched checkout is put first on
# PYTHONPATH. The captum in site-packages (the one captum-secam uses) is left alone, and the
# script checks which captum the tests imported. Exit status: 0 if the series applies and
# the patched run has no failures and no errors.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${1:-/work/.mirror/pytorch+captum/repo}"
ref="${2:-}"
TESTS="${TESTS:-tests/attr/test_secam.py tests/attr/layer tests/attr/test_guided_grad_cam.py \
tests/attr/test_targets.py tests/attr/test_hook_removal.py tests/attr/test_jit.py \
tests/attr/test_data_parallel.py tests/attr/test_common.py}"
work="$(mktemp -d /tmp/captum-secam-pr.XXXXXX)"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
git_id=(-c user.name=apply-and-test -c user.email=apply-and-test@localhost)

echo "== copying $repo to $work/captum"
git clone -q --no-checkout "$repo" "$work/captum"
cd "$work/captum"
if [[ -z "$ref" ]]; then
    ref="$(git symbolic-ref -q --short refs/remotes/origin/HEAD || echo origin/master)"
fi
# A branch at REF with its index, no files yet (they are checked out below).
git symbolic-ref HEAD refs/heads/secam-pr
git reset -q "$ref"
base="$(git rev-parse --short HEAD)"
echo "== base: $ref at $base ($(git log -1 --format='%ci %s' HEAD))"

# A partial mirror may lack a few large binaries (slides, tutorial models). Leave them out of
# the work tree and of a local commit so git can build trees; the series does not touch them.
missing="$(git ls-tree -r HEAD | awk '{print $3}' | git cat-file --batch-check='%(objectname) %(objecttype)' \
    2>/dev/null | awk '$2 == "missing" {print $1}' || true)"
if [[ -n "$missing" ]]; then
    paths="$(git ls-tree -r HEAD | awk 'NR==FNR {m[$1]; next} ($3 in m) {print $4}' <(echo "$missing") -)"
    echo "== $(echo "$paths" | wc -l) file(s) absent from this repository, left out locally:"
    echo "$paths" | sed 's/^/     /'
    git sparse-checkout set --no-cone '/*' $(echo "$paths" | sed 's|^|!/|')
    echo "$paths" | xargs git rm -q --cached --sparse
    git "${git_id[@]}" commit -q -m "local: leave out files absent from the mirror"
fi
git checkout -q -- .
applied_on="$(git rev-parse HEAD)"

echo "== test environment: a venv over the system packages, + Captum's test dependency"
python -m venv --system-site-packages "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check parameterized \
    || echo "   (pip install parameterized failed: tests that import it will error)"

run_tests() {  # $1: label; prints pytest's summary and stores it in summary_$1
    local label="$1" log="$work/pytest-$1.log"
    echo "== $label: python -m pytest $TESTS"
    local imported
    imported="$(PYTHONPATH="$work/captum" "$py" -c 'import captum; print(captum.__file__)')"
    [[ "$imported" == "$work/captum/"* ]] || { echo "imported the wrong captum: $imported"; exit 2; }
    set +e
    PYTHONPATH="$work/captum" "$py" -m pytest -q -p no:cacheprovider -rfEs $TESTS >"$log" 2>&1
    local rc=$?
    set -e
    grep -E "^(FAILED|ERROR)" "$log" | sed 's/^/     /' || true
    local summary
    summary="$(tail -n 1 "$log")"
    echo "   $label: $summary"
    eval "summary_$label=\"\$summary\""
    eval "rc_$label=$rc"
}

if [[ "${BASELINE:-1}" == 1 ]]; then
    # The unpatched branch has no tests/attr/test_secam.py: run the rest.
    saved_tests="$TESTS"
    TESTS="$(echo "$TESTS" | tr ' ' '\n' | grep -v '^tests/attr/test_secam.py$' | tr '\n' ' ')"
    run_tests unpatched
    TESTS="$saved_tests"
fi

echo "== git am $here/0*.patch"
git "${git_id[@]}" am -q --3way "$here"/0*.patch
git log --oneline "$applied_on"..HEAD | sed 's/^/     /'
git diff --stat "$applied_on"..HEAD | tail -n 1

run_tests patched
echo "   tests that exercise SeCam (collected), per file:"
PYTHONPATH="$work/captum" "$py" -m pytest -q -p no:cacheprovider --collect-only $TESTS 2>/dev/null \
    | grep -E "SeCam|test_secam.py" | sed -E 's/::.*//' | sort | uniq -c | sed 's/^/     /'
echo "== summary"
[[ "${BASELINE:-1}" == 1 ]] && echo "   unpatched $ref ($base): ${summary_unpatched}"
echo "   patched   $ref + series:   ${summary_patched}"
[[ "${KEEP:-0}" == 1 ]] && echo "   checkout kept at $work/captum"
exit "${rc_patched}"
