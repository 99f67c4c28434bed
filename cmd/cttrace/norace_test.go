//go:build privileged && !race

package main

const raceEnabled = false
