// A fetch-event handler as componentize-js users write it for
// `wasmtime serve`, nothing fnhost-specific. It counts its calls in a
// global, so a response shows whether its instance served a call before.
//
// Build: python3 examples/js/build.py hello -o hello.wasm
// (componentize-js 0.23, installed from the npm registry).

let calls = 0;

addEventListener("fetch", (event) => {
  calls += 1;
  const url = new URL(event.request.url);
  event.respondWith(
    new Response(`hello from JavaScript (${url.pathname}, call ${calls} on this instance)\n`, {
      headers: { "content-type": "text/plain" },
    }),
  );
});
