# What the BGP benchmarks read of a process they started, by PID (sourced, not run).

# User and system CPU seconds the process has used.
cpu_seconds() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"; }

# Its peak resident set size, in KiB.
peak_rss_kib() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; }
