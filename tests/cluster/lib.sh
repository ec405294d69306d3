# Shell functions of tests/cluster/up and node/start (sourced; they set $dir and $bin first).
# A process of the cluster: its output goes to $dir/NAME.log, its PID to $dir/NAME.pid, where
# tests/cluster/down finds it.
start() { # name, command...
    local name=$1; shift
    "$@" > "$dir/$name.log" 2>&1 &
    echo $! > "$dir/$name.pid"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kubectl() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
