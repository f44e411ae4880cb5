#!/bin/sh
# Entry of the pipeline image (infra/docker/Dockerfile).
#   worker [ARGS]  a Prefect worker on the work pool $PREFECT_WORK_POOL (ARGS go to `prefect worker start`)
#   anything else  run as given: the pools' flow runs start `prefect flow-run execute` here
# The Prefect API URL and auth string may come as files, so that neither is written into a container's
# or a Job's environment in clear: PREFECT_API_URL_FILE and PREFECT_API_AUTH_STRING_FILE name them
# (a Docker secret, a mounted Kubernetes Secret). A variable already set wins over its file.
set -eu

for name in PREFECT_API_URL PREFECT_API_AUTH_STRING; do
    eval "file=\${${name}_FILE:-}"
    eval "value=\${${name}:-}"
    if [ -n "$file" ] && [ -z "$value" ]; then
        if [ ! -r "$file" ]; then
            echo "pipeline-entrypoint: ${name}_FILE names $file, which is missing or unreadable for uid $(id -u);" \
                "mount the secret there or unset ${name}_FILE" >&2
            exit 64
        fi
        # Strip the newline editors and `kubectl create secret --from-file` leave at the end.
        value=$(tr -d '\r\n' <"$file")
        export "$name=$value"
    fi
done

if [ "${1:-worker}" = worker ]; then
    [ "$#" -gt 0 ] && shift
    if [ -z "${PREFECT_WORK_POOL:-}" ]; then
        echo "pipeline-entrypoint: set PREFECT_WORK_POOL to the work pool to poll (make pool-docker / pool-kubernetes create them)" >&2
        exit 64
    fi
    if [ -z "${PREFECT_API_URL:-}" ]; then
        echo "pipeline-entrypoint: set PREFECT_API_URL (or PREFECT_API_URL_FILE) to the Prefect server's API" >&2
        exit 64
    fi
    # --install-policy never: the worker packages are in the image; nothing is installed at run time.
    # --no-create-pool-if-not-found: a pool that does not exist is reported (Prefect warns "Work pool
    # ... not found!" at every poll), never created with the worker type's default template, which has
    # no GPU request and no cache mount.
    exec prefect worker start --pool "$PREFECT_WORK_POOL" --install-policy never --no-create-pool-if-not-found "$@"
fi
exec "$@"
