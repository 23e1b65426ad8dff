using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DirBackup.Store;

namespace DirBackup.Bench;

/// <summary>
/// The spine's benchmarks. Every figure is printed with the reference it is compared against, measured on this
/// machine in this run; nothing here asserts a time.
/// </summary>
public static class Program
{
    private const int Guests = 100;
    private const int BackupsPerGuest = 100;

    public static async Task<int> Main(string[] args)
    {
        var repo = args.Length > 0 ? args[0] : Directory.GetCurrentDirectory();
        var work = Path.Combine(repo, ".build", "bench");
        var store = Path.Combine(work, "store");
        var socket = Path.Combine(work, "run", "dirbackupd.sock");
        var daemon = args.Length > 2
            ? DaemonCommand.Published(Path.GetFullPath(args[2]))
            : DaemonCommand.Built(Path.Combine(AppContext.BaseDirectory, "dirbackupd.dll"));
        Console.WriteLine("daemon: " + daemon.Description);

        var which = args.Length > 1 ? args[1] : "all";
        using var reporting = Tools.HoldFreePageReporting();
        Tools.WarmMemory();
        if (which is "all" or "vm")
        {
            await new VmBench(repo, work, daemon).RunAsync();
        }
        if (which is "all" or "ct")
        {
            await new CtBench(repo, work, daemon).RunAsync();
        }
        if (which is not ("all" or "spine"))
        {
            return 0;
        }
        PrepareStore(store);
        Console.WriteLine($"fixture: {Guests * BackupsPerGuest} backups in {Guests} guests under {store}");

        var startups = new List<double>();
        for (int i = 0; i < 5; i++)
        {
            var (ms, process) = await StartDaemonAsync(daemon, socket);
            startups.Add(ms);
            if (i < 4)
            {
                await StopAsync(process);
            }
            else
            {
                await RunShimBenchAsync(repo, store, socket, process, startups);
                await StopAsync(process);
            }
        }
        return 0;
    }

    private static async Task RunShimBenchAsync(string repo, string store, string socket, Process daemon, List<double> startups)
    {
        await Task.Delay(2000);
        long idleRss = RssKiB(daemon.Id);
        var psi = new ProcessStartInfo("perl", ["-I", "perl-shim", "-I", "tests/perl/lib", "tests/perl/bench/shim-bench.pl", store, "7", "2000"])
        {
            WorkingDirectory = repo,
            RedirectStandardOutput = true,
        };
        psi.Environment["DIRBACKUP_SOCKET"] = socket;
        using var perl = Process.Start(psi)!;
        var output = await perl.StandardOutput.ReadToEndAsync();
        await perl.WaitForExitAsync();
        if (perl.ExitCode != 0)
        {
            throw new InvalidOperationException($"shim benchmark failed ({perl.ExitCode}): {output}");
        }
        var r = JsonNode.Parse(output)!;
        double shim = r["list-shim-s"]!.GetValue<double>(), seed = r["list-seed-s"]!.GetValue<double>();
        long afterRss = RssKiB(daemon.Id);
        Console.WriteLine();
        Console.WriteLine("list_volumes over 10,000 backups (median of 7)");
        Console.WriteLine($"  through shim and daemon  {shim * 1000,9:0.0} ms  ({r["list-shim-count"]} entries)");
        Console.WriteLine($"  seed's glob+stat in Perl {seed * 1000,9:0.0} ms  ({r["list-seed-count"]} entries)");
        Console.WriteLine($"  ratio seed/shim          {seed / shim,9:0.00}x  (target >= 1.00: no slower than the seed)");
        Console.WriteLine();
        Console.WriteLine("get_volume_attribute round trip through the shim (2000 calls)");
        Console.WriteLine($"  median {r["rtt-median-s"]!.GetValue<double>() * 1000:0.000} ms, p99 {r["rtt-p99-s"]!.GetValue<double>() * 1000:0.000} ms  (target median < 2 ms)");
        Console.WriteLine();
        Console.WriteLine("daemon");
        Console.WriteLine($"  start-up to a listening socket: median {Tools.Median(startups):0} ms of {startups.Count} (min {startups.Min():0}, max {startups.Max():0})");
        Console.WriteLine($"  RSS idle after start: {idleRss / 1024.0:0.0} MiB; after the runs above: {afterRss / 1024.0:0.0} MiB");
    }

    private static long RssKiB(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    }

    private static async Task<(double Milliseconds, Process Process)> StartDaemonAsync(DaemonCommand daemon, string socket)
    {
        var watch = Stopwatch.StartNew();
        var start = daemon.Serve(socket, runtimeDir: null);
        start.RedirectStandardOutput = true;
        var process = Process.Start(start)!;
        await Tools.WaitForListenerAsync(socket, process);
        return (watch.Elapsed.TotalMilliseconds, process);
    }

    private static async Task StopAsync(Process process)
    {
        Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
        await process.WaitForExitAsync();
    }

    /// <summary>10,000 committed backups shaped like real ones: manifest, guest config, a disk image file and a log.</summary>
    private static void PrepareStore(string store)
    {
        var marker = Path.Combine(store, ".complete");
        if (File.Exists(marker))
        {
            return;
        }
        if (Directory.Exists(store))
        {
            Directory.Delete(store, recursive: true);
        }
        var config = Encoding.UTF8.GetBytes("boot: order=scsi0\ncores: 2\nmemory: 2048\nscsi0: local-lvm:vm-100-disk-0,size=32G\n#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:\n");
        for (int g = 0; g < Guests; g++)
        {
            int vmid = 100 + g;
            for (int b = 0; b < BackupsPerGuest; b++)
            {
                long time = 1_700_000_000 + (b * 86_400L);
                var volume = new VolumeName(vmid, GuestType.Qemu, time);
                var dir = Path.Combine(store, vmid.ToString(CultureInfo.InvariantCulture), volume.BackupDirName);
                Directory.CreateDirectory(dir);
                File.WriteAllBytes(Path.Combine(dir, "guest.conf"), config);
                File.WriteAllBytes(Path.Combine(dir, "drive-scsi0.qcow2"), new byte[1024 + b]);
                File.WriteAllText(Path.Combine(dir, "backup.log"), "INFO: backup finished\n");
                var manifest = new Manifest
                {
                    VmId = vmid,
                    Type = "qemu",
                    BackupTime = time,
                    Size = config.Length + 1024 + b + 22,
                    Notes = b % 10 == 0 ? $"weekly {b}" : null,
                    GuestConfig = "guest.conf",
                    Devices = [new ManifestDevice { Name = "drive-scsi0", Size = 32L << 30, File = "drive-scsi0.qcow2", Parent = b == 0 ? null : $"qemu-{time - 86_400}" }],
                };
                File.WriteAllBytes(Path.Combine(dir, Manifest.FileName), manifest.ToBytes());
            }
        }
        File.WriteAllText(marker, "");
    }
}
