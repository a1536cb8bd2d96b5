#!/usr/bin/env bash
# Fills a configuration template from the environment and prints the result.
#
#   PROCONNECT_HOST=auth.agentconnect.gouv.fr SR_CLIENT_ID=… SR_PORT=8080 \
#     WASM_PATH=/etc/envoy/introspection_filter.wasm \
#     scripts/fill-template.sh envoy/proconnect.yaml.in > envoy.yaml
#
# `${NAME}` takes the variable NAME, which must be set and non-empty; `${NAME:-default}` falls
# back to the default. Nothing else is expanded (no commands, no nested variables). Values are
# limited to characters that need no quoting in YAML or JSON, so a value cannot change the
# structure of the file it lands in; anything else is refused, as is an unset variable.
set -euo pipefail

if [[ $# -ne 1 || ! -f $1 ]]; then
    echo "usage: $0 TEMPLATE > OUTPUT (variables from the environment)" >&2
    exit 2
fi

rest=$(<"$1")
out=""
pattern='\$\{([A-Z_][A-Z0-9_]*)(:-([^}]*))?\}'
safe='^[A-Za-z0-9._~:/@+=,-]+$'
while [[ $rest =~ $pattern ]]; do
    whole=${BASH_REMATCH[0]}
    name=${BASH_REMATCH[1]}
    has_default=${BASH_REMATCH[2]}
    default=${BASH_REMATCH[3]}
    value=${!name:-}
    if [[ -z $value ]]; then
        if [[ -z $has_default ]]; then
            echo "$0: $name is not set (required by $1)" >&2
            exit 1
        fi
        value=$default
    fi
    if [[ ! $value =~ $safe ]]; then
        echo "$0: $name has characters this template does not accept (allowed: A-Z a-z 0-9 . _ ~ : / @ + = , -)" >&2
        exit 1
    fi
    out+=${rest%%"$whole"*}$value
    rest=${rest#*"$whole"}
done
printf '%s%s\n' "$out" "$rest"
