//go:build race

package main

// raceEnabled: the race detector slows the harness's clients about
// fourfold, so the smoke run runs longer to reach its operation count.
const raceEnabled = true
