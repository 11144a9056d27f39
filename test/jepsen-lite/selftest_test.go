package main

import "testing"

// Every planted bug names a checker that exists and fault kinds the
// nemesis knows.
func TestPlantedBugsNameCheckersAndFaults(t *testing.T) {
	names := map[string]bool{"convergence": true}
	for _, v := range checkAll(nil, "") {
		names[v.Name] = true
	}
	kinds := map[string]bool{}
	for _, k := range faultKinds {
		kinds[k] = true
	}
	for _, b := range plantedBugs {
		if len(b.Checkers) == 0 {
			t.Errorf("bug %s names no checker", b.Name)
		}
		for _, c := range b.Checkers {
			if !names[c] {
				t.Errorf("bug %s: checker %q does not exist", b.Name, c)
			}
		}
		for _, k := range b.Kinds {
			if !kinds[k] {
				t.Errorf("bug %s: fault kind %q does not exist", b.Name, k)
			}
		}
	}
}
