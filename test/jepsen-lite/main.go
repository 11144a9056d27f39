// Command jepsen-lite starts a real kvd cluster, injects faults, records a
// history of concurrent client operations and checks it.
package main

func main() {}
