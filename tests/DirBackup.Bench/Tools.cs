using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace DirBackup.Bench;

/// <summary>Runs a tool of the benchmarks from the repository root; a failure throws with what the tool said.</summary>
public static class Tools
{
    public static async Task<string> RunAsync(string repo, string tool, IEnumerable<string> args, Dictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo(tool) { WorkingDirectory = repo, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }
        foreach (var (k, v) in env ?? [])
        {
            psi.Environment[k] = v;
        }
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} failed: {await stderr} {await stdout}");
        }
        return await stdout;
    }

    /// <summary>
    /// Returns once the daemon accepts a connection on <paramref name="socket"/>. The socket's file appears at bind,
    /// a moment before the daemon listens: a client that only waits for the file can be refused.
    /// </summary>
    public static async Task WaitForListenerAsync(string socket, Process daemon)
    {
        while (true)
        {
            try
            {
                using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                probe.Connect(new UnixDomainSocketEndPoint(socket));
                return;
            }
            catch (SocketException)
            {
                if (daemon.HasExited)
                {
                    var said = daemon.StartInfo.RedirectStandardOutput ? await daemon.StandardOutput.ReadToEndAsync() : "";
                    throw new InvalidOperationException($"the daemon exited with code {daemon.ExitCode} before it listened on {socket} (another one left running there?) {said}");
                }
                await Task.Delay(2);
            }
        }
    }

    /// <summary>The middle value (the upper one of an even count).</summary>
    public static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);

    /// <summary>Each run's time, in run order, for the reader to see the phases a median hides.</summary>
    public static string Spread(List<double> values) => string.Join(" ", values.Select(t => t.ToString("0.00", CultureInfo.InvariantCulture)));

    /// <summary>
    /// Times one run from the same starting point for every contender (MACHINE-NOTES.md): the previous run's output
    /// deleted and synced (deleting gigabytes stalls later writes on this disk), then memory warmed right before the
    /// clock starts, because the machine's memory turns slow again while it idles. A run that only takes a fraction of
    /// a second is better off without the warm-up (see <see cref="WarmMemory"/>).
    /// </summary>
    public static async Task<double> TimeSettledAsync(string repo, string outDir, Func<Task> run, bool syncAfter = false, bool warmMemory = true)
    {
        if (Directory.Exists(outDir))
        {
            Directory.Delete(outDir, recursive: true);
        }
        Directory.CreateDirectory(outDir);
        await RunAsync(repo, "sync", []);
        await Task.Delay(2000);
        if (warmMemory)
        {
            WarmMemory();
        }
        var watch = Stopwatch.StartNew();
        await run();
        if (syncAfter)
        {
            await RunAsync(repo, "sync", []);
        }
        return watch.Elapsed.TotalSeconds;
    }

    private const string MinFreeMs = "/sys/module/page_reporting/parameters/min_free_ms";
    private const string HeldMinFreeMs = "60000";

    /// <summary>
    /// Keeps the guest kernel from handing freed memory back to the hypervisor while the benchmarks run, where its
    /// free page reporting has that knob (this machine's kernel; a PVE host on bare metal reports nothing), and puts
    /// the old value back when disposed. With pages reported as soon as they are free, the 4 GiB each warm-up touched
    /// are handed back a moment later, during the timed run. Interleaved incrementals (two daemons taking turns):
    /// with warm-ups and reporting as it is, 0.19-0.75 s, in two modes; without warm-ups, 0.18-0.22 s in 12 of 12;
    /// with warm-ups and reporting held off, 0.20-0.24 s in 9 of 12 in one series and two modes again (0.19-0.48 s)
    /// in another. So this removes one cause of the slow phases, not all of them.
    /// </summary>
    public static IDisposable HoldFreePageReporting()
    {
        string original;
        try
        {
            original = File.ReadAllText(MinFreeMs).Trim();
            File.WriteAllText(MinFreeMs, HeldMinFreeMs);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.WriteLine($"free page reporting: left as it is ({MinFreeMs}: {e.Message})");
            return new Restore(null);
        }
        Console.WriteLine($"free page reporting: held off for the benchmarks ({MinFreeMs} {original} -> {HeldMinFreeMs} ms, restored at the end)");
        var restore = new Restore(original);
        // SIGTERM and Ctrl-C end the process without unwinding to the caller's using.
        AppDomain.CurrentDomain.ProcessExit += (_, _) => restore.Dispose();
        Console.CancelKeyPress += (_, _) => restore.Dispose();
        return restore;
    }

    private sealed class Restore(string? original) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (original is not null && Interlocked.Exchange(ref _done, 1) == 0)
            {
                File.WriteAllText(MinFreeMs, original);
            }
        }
    }

    private static readonly nuint WarmBytes = (nuint)4 << 30;
    private const int HugePage = 2 << 20;

    /// <summary>
    /// Touches 4 GiB in 2 MiB transparent huge pages and frees them. The hypervisor takes back free memory in 2 MiB
    /// blocks (free page reporting, order 9); a warm-up made of 4 KiB pages (a tmpfs file) left those blocks cold, so
    /// whoever later allocated 2 MiB page-cache folios (2 MiB writes into a file) paid the hypervisor's faults: 1.6 GB
    /// written in 2 MiB pieces took 1.9-3.8 s after a tmpfs warm-up and 0.29-0.37 s after this one.
    /// The warm-up has an after-effect of its own, though: for seconds after it, starting processes and touching new
    /// memory run about half as fast here. An incremental backup (0.13-0.2 s, two new processes) lies wholly inside
    /// that. Incrementals right after a qemu-img convert each, as in the benchmark's rounds and with free page
    /// reporting held off as here (scratch harness): 0.14-0.20 s in 10 of 10 without the warm-up; with it, 0.29-0.38 s
    /// in 12 of 14 (0.15 and 0.17 s in the other two), `qemu-img create` alone taking 24-71 ms instead of 8-13 ms.
    /// Waiting 2 s after the warm-up still left 5 of 10 at 0.31-0.35 s.
    /// </summary>
    public static void WarmMemory()
    {
        nint region = Mmap(0, WarmBytes, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (region == -1)
        {
            throw new InvalidOperationException("mmap of the warm-up region failed: errno " + Marshal.GetLastPInvokeError());
        }
        try
        {
            if (Madvise(region, WarmBytes, MadvHugepage) != 0)
            {
                throw new InvalidOperationException("madvise(MADV_HUGEPAGE) failed: errno " + Marshal.GetLastPInvokeError());
            }
            var page = new byte[HugePage];
            Array.Fill(page, (byte)1);
            for (nuint offset = 0; offset < WarmBytes; offset += HugePage)
            {
                Marshal.Copy(page, 0, region + (nint)offset, HugePage);
            }
        }
        finally
        {
            _ = Munmap(region, WarmBytes);
        }
    }

    private const int ProtRead = 1, ProtWrite = 2, MapPrivate = 2, MapAnonymous = 0x20, MadvHugepage = 14;

    [DllImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static extern nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [DllImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static extern int Madvise(nint addr, nuint length, int advice);

    [DllImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static extern int Munmap(nint addr, nuint length);
}
