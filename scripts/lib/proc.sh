# shellcheck shell=bash
# CPU accounting from /proc shared by the benchmark scripts (sourced).

# cpu_ticks PID: utime + stime of the whole process (all its threads), in
# clock ticks.
cpu_ticks() {
    local stat
    stat=$(</proc/"$1"/stat)
    # Fields after the command name, which is in parentheses and may hold
    # spaces: utime and stime are fields 14 and 15.
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# cpu_busy CPU: "BUSY TOTAL", the clock ticks one CPU spent not idle and in
# all, since boot (/proc/stat).
cpu_busy() {
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}

# tree_ticks PID: utime + stime of PID and its children (PostgreSQL's
# postmaster and every backend and helper process it forked).
tree_ticks() {
    local sum=0 p t
    for p in $1 $(pgrep -P "$1"); do
        t=$(cpu_ticks "$p" 2>/dev/null) && sum=$((sum + t))
    done
    echo "$sum"
}

# tree_switches PID: context switches (voluntary and not) of PID and its
# children. A PostgreSQL backend that finds no query waiting sleeps and is
# woken by the next one: switches per request tell how its queries arrive.
tree_switches() {
    local sum=0 p
    for p in $1 $(pgrep -P "$1"); do
        [[ -r /proc/$p/status ]] || continue
        sum=$((sum + $(awk '/ctxt_switches/ { n += $2 } END { print n + 0 }' /proc/"$p"/status 2>/dev/null || echo 0)))
    done
    echo "$sum"
}
