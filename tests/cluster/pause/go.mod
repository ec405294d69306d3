// The pod sandbox process for the test node; standard library only.
module raylight.dev/tests/cluster/pause

go 1.26.0
