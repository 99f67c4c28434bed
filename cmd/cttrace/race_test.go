//go:build privileged && race

package main

// raceEnabled: this test binary, which doubles as cttrace, was built with
// -race, whose shadow memory multiplies cttrace's resident size: memory
// tests run a build without it (startTopMeasured).
const raceEnabled = true
