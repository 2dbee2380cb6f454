# Helpers for the jobs/ scripts that run from the repository (local.sh, horovodrun.sh):
# sourced, not run. slurm.sbatch and pbs_polaris.sh keep their own copy of these lines:
# Slurm and PBS run a spooled copy of the script, which may not find the repository
# (they then fall back to hvd-stgnn on PATH). Keep the copies the same.
# Uses the caller's ME (for messages) and CMD (the command array).

quote_words() {  # the words as one line a shell would read back as the same words
    local w sq="'" out=()
    for w in "$@"; do
        if [[ "$w" =~ ^[A-Za-z0-9_./:=,+@%^-]+$ ]]; then out+=("$w"); else out+=("'${w//$sq/$sq\\$sq$sq}'"); fi
    done
    echo "${out[*]}"
}
jemalloc_prefix() {  # sets PRELOAD=(env LD_PRELOAD=... MALLOC_CONF=...) when asked and found
    PRELOAD=()
    [ "${HVD_STGNN_JEMALLOC:-0}" = 1 ] || return 0
    local lib="${HVD_STGNN_JEMALLOC_LIB:-}" c
    if [ -z "$lib" ]; then
        for c in $(ldconfig -p 2>/dev/null | awk '/libjemalloc\.so\.2 /{print $NF}' || true) \
                 /usr/lib/*-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2 \
                 "${CONDA_PREFIX:-/nonexistent}/lib/libjemalloc.so.2"; do
            if [ -f "$c" ]; then lib="$c"; break; fi
        done
    fi
    if [ -n "$lib" ] && [ -f "$lib" ]; then
        PRELOAD=(env "LD_PRELOAD=$lib${LD_PRELOAD:+:$LD_PRELOAD}" "MALLOC_CONF=${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}")
    else
        echo "$ME: warning: HVD_STGNN_JEMALLOC=1 but no libjemalloc.so.2 found${lib:+ at $lib}" \
             "(apt-get install libjemalloc2, or set HVD_STGNN_JEMALLOC_LIB); using the default allocator" >&2
    fi
}
add_threads_flag() {  # `hvd-stgnn train ...` without --threads: add --threads $OMP_NUM_THREADS
    [ "${#CMD[@]}" -ge 2 ] && [ "${CMD[0]##*/}" = hvd-stgnn ] && [ "${CMD[1]}" = train ] || return 0
    local w
    for w in "${CMD[@]:2}"; do case "$w" in --threads|--threads=*) return 0 ;; esac; done
    CMD=("${CMD[0]}" train --threads "$OMP_NUM_THREADS" "${CMD[@]:2}")
}
is_dry_run() { case "${DRY_RUN:-0}" in 0|"") return 1 ;; *) return 0 ;; esac; }
