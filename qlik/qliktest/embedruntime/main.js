// A stand-in for Qlik's embed runtime, <tenant>/qlik-embed/main.js, served
// by qliktest. The real runtime is not published; @qlik/embed-web-components
// loads it as a classic script and then calls window.QlikMain.import(name)
// for the modules it needs. In the browser, @qlik/api's public entry points
// ask the same QlikMain for their implementation ("auth@v1",
// "invoke-fetch@v1", "qix@v1"); this stand-in answers with @qlik/api's own
// implementation chunks (the ones it runs under Node), served from the npm
// package at /qlik-embed/qlik-api/, so every token, 401 and exchange goes
// through Qlik's published code. "embed-vanilla@v1" is the stand-in's only
// own module (embed-vanilla.js).
(function () {
  "use strict";
  var base = document.currentScript && document.currentScript.src;
  // name -> path under /qlik-embed/, filled in by the tenant.
  var modules = __QLIKTEST_MODULES__;
  window.QlikMain = {
    import: function (name) {
      var path = modules[name];
      if (!path) {
        return Promise.reject(new Error("qliktest embed runtime: no module " + name));
      }
      return import(new URL(path, base).href);
    },
    resourceNeedsCredentials: function () {
      return false;
    },
  };
})();
