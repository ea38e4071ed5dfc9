//! `wire_bench`'s node process, with the allocator of the `weft` binary (see
//! `benches::wire_node`). Usage: `wire_node DIR dense|plain wide|narrow`; `wire_bench`
//! starts it when it finds it next to itself.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, wire, batches] = args.as_slice() else {
        panic!("usage: wire_node DIR dense|plain wide|narrow");
    };
    benches::wire_node::serve_node(dir, wire == "plain", batches == "wide");
}
