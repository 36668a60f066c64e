package qliktest

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"strings"
)

// The embed runtime stand-in. @qlik/embed-web-components (npm) is a loader:
// it loads Qlik's UI runtime from the tenant, <host>/qlik-embed/main.js,
// which is not published. ServeEmbedRuntime makes the tenant serve a
// stand-in (embedruntime/) whose modules are @qlik/api's own implementation,
// so a browser test runs Qlik's published code against the tenant and
// whatever sits in front of it. The stand-in's one REST call,
// GET /api/v1/apps/{appId}, is answered by handleAppInfo.

//go:embed embedruntime/main.js embedruntime/embed-vanilla.js
var embedRuntimeFiles embed.FS

// embedRuntime is what ServeEmbedRuntime was given, ready to serve.
type embedRuntime struct {
	mainJS  []byte
	qlikAPI fs.FS
}

// runtimeChunk finds @qlik/api's implementation chunks in its
// public-runtime-modules chunk, which imports them under Node:
// import("./auth-<hash>.js") and so on.
var runtimeChunk = regexp.MustCompile(`import\("\./((auth|invoke-fetch|qix)-[A-Za-z0-9_-]+\.js)"\)`)

// ServeEmbedRuntime makes the tenant serve a stand-in for Qlik's embed
// runtime under /qlik-embed/: main.js (window.QlikMain), embed-vanilla.js
// (what <qlik-embed> mounts) and, under /qlik-embed/qlik-api/, the files of
// the @qlik/api npm package in qlikAPI (e.g. os.DirFS of
// node_modules/@qlik/api). QlikMain.import answers "auth@v1",
// "invoke-fetch@v1" and "qix@v1" with @qlik/api's implementation chunks,
// found in the package. Without a call, /qlik-embed/ answers 404.
//
// The auth and invoke-fetch chunks load in a browser as they are. The qix
// chunk imports bare specifiers (enigma.js, lodash-es, extend) that a
// browser cannot resolve without an import map, so @qlik/api's qix
// (openAppSession) does not run on the stand-in; embed-vanilla.js opens the
// engine websocket itself with @qlik/api's getWebSocketAuthParams.
func (t *Tenant) ServeEmbedRuntime(qlikAPI fs.FS) error {
	matches, err := fs.Glob(qlikAPI, "chunks/public-runtime-modules-*.js")
	if err != nil || len(matches) != 1 {
		return fmt.Errorf("qliktest: @qlik/api has %d chunks/public-runtime-modules-*.js (%v), want 1", len(matches), err)
	}
	src, err := fs.ReadFile(qlikAPI, matches[0])
	if err != nil {
		return fmt.Errorf("qliktest: %w", err)
	}
	modules := map[string]string{"embed-vanilla@v1": "embed-vanilla.js"}
	for _, m := range runtimeChunk.FindAllSubmatch(src, -1) {
		modules[string(m[2])+"@v1"] = "qlik-api/chunks/" + string(m[1])
	}
	for _, name := range []string{"auth@v1", "invoke-fetch@v1", "qix@v1"} {
		if modules[name] == "" {
			return fmt.Errorf("qliktest: no implementation of %s in %s", name, matches[0])
		}
	}
	mapJSON, _ := json.Marshal(modules) // a map of strings: cannot fail
	mainJS, _ := embedRuntimeFiles.ReadFile("embedruntime/main.js")
	mainJS = bytes.Replace(mainJS, []byte("__QLIKTEST_MODULES__"), mapJSON, 1)
	t.runtime.Store(&embedRuntime{mainJS: mainJS, qlikAPI: qlikAPI})
	return nil
}

// handleEmbedRuntime answers GET /qlik-embed/{file...}: JavaScript only,
// with the CORS headers of an allowed origin (module scripts are fetched in
// cors mode).
func (t *Tenant) handleEmbedRuntime(w http.ResponseWriter, r *http.Request) {
	rt := t.runtime.Load()
	file := r.PathValue("file")
	var (
		body []byte
		err  error
	)
	switch {
	case rt == nil:
		err = fs.ErrNotExist
	case file == "main.js":
		body = rt.mainJS
	case file == "embed-vanilla.js":
		body, err = embedRuntimeFiles.ReadFile("embedruntime/embed-vanilla.js")
	case strings.HasPrefix(file, "qlik-api/") && path.Ext(file) == ".js" && fs.ValidPath(strings.TrimPrefix(file, "qlik-api/")):
		body, err = fs.ReadFile(rt.qlikAPI, strings.TrimPrefix(file, "qlik-api/"))
	default:
		err = fs.ErrNotExist
	}
	if errors.Is(err, fs.ErrNotExist) {
		writeError(w, http.StatusNotFound, "HTTP-404", "Not found.", "No such runtime file.")
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "HTTP-500", "Internal server error.", "The runtime file could not be read.")
		return
	}
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// handleAppInfo answers GET /api/v1/apps/{appId}, the stand-in runtime's
// REST call (@qlik/api apps.getAppInfo), for any valid bearer token: 401
// with the errors body otherwise. As a test aid beyond the API it says whom
// the token acts for, in qliktestCaller. Every app id exists.
func (t *Tenant) handleAppInfo(w http.ResponseWriter, r *http.Request) {
	u, ok := t.bearerUser(w, r, false)
	if !ok {
		return
	}
	id := r.PathValue("appId")
	writeJSON(w, http.StatusOK, map[string]any{
		"attributes":     map[string]string{"id": id, "name": "qliktest app " + id},
		"qliktestCaller": map[string]string{"id": u.ID, "subject": u.Subject},
	})
}
