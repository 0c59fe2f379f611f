#!/bin/sh
# The image's entry point: `liveml "$@"`, after turning secret files into the variables
# that liveml and its PostgreSQL driver read.
#
# Compose and Docker secrets arrive as files (/run/secrets/NAME). Settings that have a
# *_FILE form of their own (LIVEML_REGISTRY_TOKEN_FILE, LIVEML_ADMIN_TOKEN_FILE, the TLS
# paths) need nothing here; these do not, so VAR_FILE=PATH sets VAR to the file's content:
#   LIVEML_ARTIFACT_KEY_FILE       -> LIVEML_ARTIFACT_KEY (base64 AES-256 key)
#   LIVEML_ARTIFACT_OLD_KEYS_FILE  -> LIVEML_ARTIFACT_OLD_KEYS (id:base64,...; empty = none)
#   PGPASSWORD_FILE                -> PGPASSWORD (asyncpg uses it when the URL has none)
set -eu

from_file() {
    eval "file=\${${1}_FILE:-}"
    if [ -n "$file" ]; then
        value=$(cat "$file")
        unset "${1}_FILE"
        if [ -n "$value" ]; then
            export "$1=$value"
        fi
    fi
}

from_file LIVEML_ARTIFACT_KEY
from_file LIVEML_ARTIFACT_OLD_KEYS
from_file PGPASSWORD

exec liveml "$@"
