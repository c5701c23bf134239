#!/usr/bin/env bash
# Seeds every fuzz target's corpus with the protocol fixtures.
set -euo pipefail
cd "$(dirname "$0")"
for target in signature envelope layer; do
    mkdir -p "corpus/$target"
    cp ../src/test_util/fixtures/events/*.json "corpus/$target/"
done
