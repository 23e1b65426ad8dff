using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

namespace DirBackup.Bench;

/// <summary>
/// Container backup of a 2 GiB tree in 20,000 files through shim and daemon (user namespace, nsenter, tar)
/// against plain tar of the same tree into a file on the same filesystem, in the same run.
/// </summary>
public sealed class CtBench(string repo, string work, DaemonCommand daemonCommand)
{
    private const int Dirs = 200;
    private const int FilesPerDir = 100;
    private const int FileSize = 105 * 1024;
    private const int Runs = 5;

    private string Root => Path.Combine(work, "ct");
    private string Tree => Path.Combine(Root, "tree");
    private string Out => Path.Combine(Root, "out");

    public async Task RunAsync()
    {
        await PrepareAsync();
        var socket = Path.Combine(work, "run", "ct-bench.sock");
        using var daemon = Process.Start(daemonCommand.Serve(socket, Path.Combine(work, "run", "qsd-ct")))!;
        try
        {
            await Tools.WaitForListenerAsync(socket, daemon);
            // Untimed: the tree is kept from one benchmark run to the next, and the VM benchmarks' writes push part of it
            // out of the page cache (1,586 of its 2,051 MiB were resident when this section began, measured once); ours,
            // first in every round, would read that part from disk alone. This also loads the daemon's container code,
            // as the VM benchmark's untimed backup does.
            await OursAsync(socket, 1_699_999_999);
            var ours = new List<double>();
            var tar = new List<double>();
            for (int run = 0; run < Runs; run++)
            {
                ours.Add(await TimeAsync(() => OursAsync(socket, 1_700_000_000 + run)));
                tar.Add(await TimeAsync(() => Run("tar", ["cpf", Path.Combine(Out, "plain.tar"), "--one-file-system", "--sparse", "--numeric-owner", "--acls", "--xattrs",
                    "--xattrs-include=user.*", "--xattrs-include=security.capability", "-C", Tree, "./"])));
            }
            double o = Tools.Median(ours), t = Tools.Median(tar);
            double size = (double)Dirs * FilesPerDir * FileSize / (1 << 20);
            Console.WriteLine();
            Console.WriteLine($"Container backup of {size / 1024:0.0} GiB in {Dirs * FilesPerDir} files, median of {Runs}");
            Console.WriteLine($"  through shim and daemon (user namespace, nsenter, tar) {o,6:0.00} s  {size / o,6:0} MiB/s  (runs {Tools.Spread(ours)})");
            Console.WriteLine($"  plain tar into a file                                  {t,6:0.00} s  {size / t,6:0} MiB/s  (runs {Tools.Spread(tar)})");
            Console.WriteLine($"  throughput ratio {t / o:0.00}x; within each round {Tools.Spread(tar.Zip(ours, (a, b) => a / b).ToList())} (target at least 0.95x)");
        }
        finally
        {
            daemon.Kill();
        }
    }

    private async Task OursAsync(string socket, long time)
    {
        var storage = Path.Combine(Out, "store");
        Directory.CreateDirectory(storage);
        var config = Path.Combine(Root, "ct.conf");
        await File.WriteAllTextAsync(config, "arch: amd64\nhostname: bench\nunprivileged: 1\n");
        var output = await Run("perl", ["-T", "-I", "perl-shim", "-I", "tests/perl/lib", "tools/vzdump-ct", "--storeid", "bench", "--path", storage,
            "--vmid", "300", "--config", config, "--tree", Tree, "--start-time", time.ToString(CultureInfo.InvariantCulture)], new() { ["DIRBACKUP_SOCKET"] = socket });
        if (JsonNode.Parse(output)!["error"] is JsonNode error)
        {
            throw new InvalidOperationException("container backup failed: " + error);
        }
    }

    // Container archives are compared durable with durable: the sync is timed.
    private Task<double> TimeAsync(Func<Task> run) => Tools.TimeSettledAsync(repo, Out, run, syncAfter: true);

    private async Task PrepareAsync()
    {
        var marker = Path.Combine(Root, ".complete");
        if (File.Exists(marker))
        {
            return;
        }
        Console.WriteLine("preparing the 2 GiB container tree (once; kept in .build/bench/ct)...");
        var random = new Random(7);
        var buffer = new byte[FileSize];
        for (int d = 0; d < Dirs; d++)
        {
            var dir = Path.Combine(Tree, "srv", $"d{d:000}");
            Directory.CreateDirectory(dir);
            for (int f = 0; f < FilesPerDir; f++)
            {
                random.NextBytes(buffer);
                await File.WriteAllBytesAsync(Path.Combine(dir, $"f{f:000}.bin"), buffer);
            }
        }
        Directory.CreateDirectory(Path.Combine(Tree, "sbin"));
        await Run("chown", ["-R", "100000:100000", Tree]);
        // Container root must be able to walk to its tree, as to /mnt/vzsnap0 on a node.
        await Run("chmod", ["o+x", work, Root]);
        File.WriteAllText(marker, "");
    }

    private Task<string> Run(string tool, IEnumerable<string> args, Dictionary<string, string>? env = null) => Tools.RunAsync(repo, tool, args, env);
}
