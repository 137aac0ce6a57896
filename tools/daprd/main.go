// Command daprd is the released Dapr runtime (github.com/dapr/dapr, pinned in go.mod)
// with only the components this project uses registered.
//
// The upstream cmd/daprd registers components in files guarded by the
// `allcomponents`/`stablecomponents` build tags; building all of them takes a
// large download. Here we register the few we need, the same way.
package main

import (
	nrmdns "github.com/dapr/components-contrib/nameresolution/mdns"
	nrsqlite "github.com/dapr/components-contrib/nameresolution/sqlite"
	pubsubinmemory "github.com/dapr/components-contrib/pubsub/in-memory"
	pubsubredis "github.com/dapr/components-contrib/pubsub/redis"
	stateinmemory "github.com/dapr/components-contrib/state/in-memory"
	stateredis "github.com/dapr/components-contrib/state/redis"
	"github.com/dapr/dapr/cmd/daprd/app"
	nrloader "github.com/dapr/dapr/pkg/components/nameresolution"
	pubsubloader "github.com/dapr/dapr/pkg/components/pubsub"
	stateloader "github.com/dapr/dapr/pkg/components/state"
)

func main() {
	stateloader.DefaultRegistry.RegisterComponent(stateredis.NewRedisStateStore, "redis")
	stateloader.DefaultRegistry.RegisterComponent(stateinmemory.NewInMemoryStateStore, "in-memory")
	pubsubloader.DefaultRegistry.RegisterComponent(pubsubredis.NewRedisStreams, "redis")
	pubsubloader.DefaultRegistry.RegisterComponent(pubsubinmemory.New, "in-memory")
	nrloader.DefaultRegistry.RegisterComponent(nrmdns.NewResolver, "mdns")
	nrloader.DefaultRegistry.RegisterComponent(nrsqlite.NewResolver, "sqlite")
	app.Run()
}
