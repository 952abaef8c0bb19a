#!/usr/bin/env bash
# Print k8s manifests with their ${RAYGENRE_...} placeholders replaced by the values in k8s/values.env.
#
#   k8s/render.sh k8s/raycluster.yaml      | kubectl apply -f -
#   k8s/render.sh k8s/rayjob-featurize.yaml | kubectl create -f -
#   RAYGENRE_GPU_WORKERS=8 k8s/render.sh k8s/rayjob-tune.yaml | kubectl create -f -   # env wins over the file
#
# Another values file: RAYGENRE_VALUES=path/to/prod.env k8s/render.sh ...
# Fails (and prints nothing) when a manifest uses a placeholder the values file does not define.
# Needs only bash (3.2 or newer); `envsubst` from gettext gives the same result for these files.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # bash 5.2: '&' in a value stays a literal '&'

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
values="${RAYGENRE_VALUES:-$here/values.env}"
if [ $# -eq 0 ]; then
  echo "usage: $0 MANIFEST.yaml [MANIFEST.yaml ...]   (values from $values)" >&2
  exit 2
fi

keys=()
vals=()
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in '' | '#'*) continue ;; esac
  key="${line%%=*}"
  if ! [[ "$key" =~ ^RAYGENRE_[A-Z0-9_]+$ ]] || [ "$key" = "$line" ]; then
    echo "$values: not a RAYGENRE_NAME=value line: $line" >&2
    exit 2
  fi
  value="${line#*=}"
  if [ -n "${!key:-}" ]; then value="${!key}"; fi
  keys+=("$key")
  vals+=("$value")
done <"$values"

out=""
for file in "$@"; do
  text="$(<"$file")"
  for i in "${!keys[@]}"; do
    text="${text//"\${${keys[$i]}}"/"${vals[$i]}"}"
  done
  if [[ "$text" =~ \$\{RAYGENRE_[A-Za-z0-9_]*\} ]]; then
    echo "$file: ${BASH_REMATCH[0]} is not defined in $values" >&2
    exit 1
  fi
  if [ -n "$out" ]; then out+=$'\n---\n'; fi
  out+="$text"
done
printf '%s\n' "$out"
