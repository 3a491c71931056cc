package rollup_test

import "slices"

func slicesSort(s []int64) { slices.Sort(s) }
