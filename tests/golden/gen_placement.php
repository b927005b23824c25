<?php
// Writes placement.csv: Shimmie's own link-template placement over many keys and
// templates, so tests/placement_golden.rs can pin shimmer to it without PHP.
// Usage (see README.md):
//   php gen_placement.php <shimmie-main> [<shimmie-2.11> <flexihash-2.0.2-src>] [out.csv]
// Nothing of Shimmie is copied here: its files are required from the checkouts.

declare(strict_types=1);

namespace Safe {
    // Shimmie main calls \Safe\preg_match (thecodingmachine/safe, a composer
    // dependency). Without vendor/ we define it as Safe does: preg_match, but
    // throwing instead of returning false.
    function shim_preg_match(string $pattern, string $subject, ?array &$matches = null): int
    {
        $r = \preg_match($pattern, $subject, $matches);
        if ($r === false) {
            throw new \RuntimeException("preg_match failed: " . \preg_last_error_msg());
        }
        return $r;
    }
}

namespace {

function usage(): never
{
    fwrite(STDERR, "usage: php gen_placement.php <shimmie-main> [<shimmie-2.11> <flexihash-src>] [out.csv]\n");
    exit(2);
}

$args = array_slice($argv, 1);
if (count($args) < 1) {
    usage();
}
$main = rtrim($args[0], "/");
$legacy = null;
$flexi = null;
$out = __DIR__ . "/placement.csv";
if (count($args) >= 3) {
    $legacy = rtrim($args[1], "/");
    $flexi = rtrim($args[2], "/");
    if (count($args) >= 4) {
        $out = $args[3];
    }
} elseif (count($args) === 2) {
    $out = $args[1];
}

// ---- Shimmie main: LoadBalancer (weighted rendezvous, Shimmie >= 2.12)
if (file_exists("$main/vendor/autoload.php")) {
    require_once "$main/vendor/autoload.php";
} else {
    if (!function_exists('Safe\preg_match')) {
        eval('namespace Safe; function preg_match(string $p, string $s, ?array &$m = null): int { return shim_preg_match($p, $s, $m); }');
    }
    foreach (["SCoreException", "UserError", "InvalidInput"] as $e) {
        require_once "$main/core/Exceptions/$e.php";
    }
}
require_once "$main/core/Util/LoadBalancer.php";

// ---- Shimmie 2.11: load_balance_url() on flexihash-php 2.0.2
if ($legacy !== null) {
    if (file_exists("$legacy/vendor/autoload.php")) {
        require_once "$legacy/vendor/autoload.php";
    } else {
        foreach (["Hasher/HasherInterface", "Hasher/Crc32Hasher", "Exception", "Flexihash"] as $f) {
            require_once "$flexi/$f.php";
        }
    }
    require_once "$legacy/core/util.php";
}

// What Shimmie's ParseLinkTemplateEvent does for the variables the mirror knows
// (ext/image/main.php replaces these before load_balance_url sees the template).
function substitute(string $tmpl, string $hash): string
{
    $tmpl = str_replace('$hash_ab', substr($hash, 0, 2), $tmpl);
    $tmpl = str_replace('$hash_cd', substr($hash, 2, 2), $tmpl);
    return str_replace('$hash', $hash, $tmpl);
}

/** Calls Shimmie; a throw or a PHP warning becomes "!<what>". */
function link_for(string $algorithm, string $tmpl, string $key, int $n): string
{
    $warning = null;
    set_error_handler(function (int $no, string $msg) use (&$warning): bool {
        $warning = $msg;
        return true;
    });
    try {
        $link = $algorithm === "rendezvous"
            ? \Shimmie2\LoadBalancer::load_balance_url($tmpl, $key, $n)
            : \Shimmie2\load_balance_url($tmpl, $key, $n);
    } catch (\Throwable $e) {
        return "!" . get_class($e);
    } finally {
        restore_error_handler();
    }
    return $warning === null ? $link : "!warning";
}

// Keys: Shimmie's published ones, then md5("<from>"), md5("<from + 1>"), ...; each
// template starts where the previous one stopped, so thousands of hashes are seen.
function keys(int $count, int $from): array
{
    $keys = ["7ac19c10d6859415", "ab25bc2"];
    for ($i = $from; count($keys) < $count; $i++) {
        $keys[] = md5((string)$i);
    }
    return $keys;
}

function many(int $n, callable $weight): string
{
    $opts = [];
    for ($i = 0; $i < $n; $i++) {
        $opts[] = sprintf("n%02d=%d", $i, $weight($i));
    }
    return "{" . implode(",", $opts) . "}";
}

// [template, key count, algorithms]
$both = ["rendezvous", "flexihash"];
$r = ["rendezvous"];
$templates = [
    ["https://m-{a=5,b=5,c=10,d=0}.example.com/_images/\$hash/x.jpg", 150, $both],
    ["{foo=10,bar=5,baz=5,quux=0}", 800, $both],
    ["{a=5,b=5,c=10}", 1300, $both],
    ["/\$hash_ab/\$hash_cd/{x,y}-{a=1,b=2}/\$hash", 100, $both],   // last braces win
    ["{10,9}", 200, $both],                                       // PHP int keys
    ["{10=1,9=1,1e1=1,010=1,10.0=1}", 300, $both],                 // numeric strings
    ["{ 1=1,+1=1,-1=1,1=1,0x1A=1}", 200, $both],
    ["{x=1,10=0,9=0,1e1=0,a=0,B=0,=0}", 200, $r],                   // ties at score 0
    ["{10=0,9=0,1e1=0,010=0,a=0}", 200, $r],                        // all zero
    ["{a=3,b=-2,c=1}", 300, $both],                                // negative weight
    ["{a=-1,b=-5}", 200, $r],
    ["{a=1,b=2,a=3}", 200, $both],                                  // repeated name
    ["{a=5abc,b= 7,c=abc,d=9999999999999999999,e=-9999999999999999999}", 200, $r],
    ["{a=1.9,b=2.5,c=0x10}", 200, $both],
    ["{a,,b}", 200, $both],                                         // empty name
    ["{}", 50, $both],
    ["{solo}", 100, $both],                                         // single node
    ["{solo=0}", 50, $both],
    ["{solo=3,gone=0}", 100, $both],
    ["{a=1=2,b}", 50, $both],                                       // 3 parts
    ["_images/\$hash/x.jpg", 50, $both],                            // unbalanced
    [many(40, fn ($i) => ($i * 7) % 10), 80, $both],              // weights 0..9
    [many(100, fn ($i) => 1), 60, $r],
];

$fh = fopen($out, "w");
if ($fh === false) {
    fwrite(STDERR, "cannot write $out\n");
    exit(1);
}
fputcsv($fh, ["algorithm", "template", "key", "link0", "link1", "order"], ",", '"', "");
$rows = 0;
$from = 0;
foreach ($templates as [$tmpl, $count, $algorithms]) {
    $keys = keys($count, $from);
    $from += $count;
    foreach ($algorithms as $algorithm) {
        if ($algorithm === "flexihash" && $legacy === null) {
            continue;
        }
        // The full order, as node names, for small templates: n = 0 .. count-1 on
        // the bare braces, so the link is the node name itself.
        $names = null;
        if (preg_match("/(.*){(.*)}(.*)/", $tmpl, $m) && substr_count($m[2], ",") < 8) {
            // Distinct names as PHP array keys: a repeated name is one node.
            $distinct = [];
            foreach (explode(",", $m[2]) as $opt) {
                $distinct[explode("=", $opt)[0]] = true;
            }
            $names = count($distinct);
        }
        foreach ($keys as $key) {
            $order = "";
            if ($names !== null) {
                $seen = [];
                for ($n = 0; $n < $names; $n++) {
                    $name = link_for($algorithm, "{" . $m[2] . "}", $key, $n);
                    if (str_contains($name, "|")) {
                        throw new \LogicException("node names must not contain |");
                    }
                    $seen[] = $name;
                }
                $order = implode("|", $seen);
            }
            $t = substitute($tmpl, $key);
            fputcsv($fh, [
                $algorithm, $tmpl, $key,
                link_for($algorithm, $t, $key, 0),
                link_for($algorithm, $t, $key, 1),
                $order,
            ], ",", '"', "");
            $rows++;
        }
    }
}
fclose($fh);
fwrite(STDERR, "wrote $rows rows to $out\n");
}
