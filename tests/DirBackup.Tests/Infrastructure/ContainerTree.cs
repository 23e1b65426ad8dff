using System.Diagnostics;
using System.Text;

namespace DirBackup.Tests.Infrastructure;

/// <summary>
/// A small container root filesystem as it sits on the host for an unprivileged container (ids shifted by
/// 100000): owners 0, 33 and 1000 of the container, a setuid binary, a file capability, an ACL, symbolic and
/// hard links, a sparse file, a fifo, and paths the tests exclude.
/// </summary>
public static class ContainerTree
{
    public static async Task CreateAsync(string root)
    {
        Directory.CreateDirectory(root);
        var script = """
            set -e
            cd "$1"
            mkdir -p sbin bin etc tmp var/log var/www home/user/cache/deep dev lost+found
            echo ct > etc/hostname
            ln etc/hostname etc/hostname.hard
            printf 'root:x:0:0::/root:/bin/sh\n' > etc/passwd
            echo junk > tmp/junk
            echo log > var/log/syslog.log
            echo page > var/www/index.html
            echo mine > home/user/file
            echo cached > home/user/cache/deep/blob
            echo quote > "home/user/it's here"
            echo bracket > home/user/a.txt
            echo kept > home/user/c.txt
            echo q > home/user/q1
            touch "home/user/my file.bak"
            cp /bin/true bin/true
            cp /bin/true sbin/init
            ln -s ../bin/true sbin/t
            truncate -s 8M home/user/sparse
            echo tail >> home/user/sparse
            mkfifo home/user/fifo
            chown -R 100000:100000 .
            chown -R 100033:100033 var/www
            chown 101000:101000 home/user/file home/user/sparse
            chmod 4755 bin/true
            setcap cap_net_raw+ep sbin/init
            setfacl -m u:100033:r etc/hostname
            """;
        await RunAsync("bash", ["-c", script, "tree", root]);
    }

    /// <summary>
    /// Every entry with what a restore must keep: type, mode, owner, content, link target, hard link count, xattrs
    /// and ACL. A directory's link count only counts its subdirectories, which exclusions change.
    /// </summary>
    public static async Task<SortedDictionary<string, string>> DescribeAsync(string root, int idShift, bool withAcls = true)
    {
        var listing = await RunAsync("find", [root, "-mindepth", "1", "-printf", "%P\t%y\t%m\t%U\t%G\t%s\t%l\t%n\n"]);
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in listing.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var f = line.Split('\t');
            var path = Path.Combine(root, f[0]);
            var content = f[1] == "f" ? Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(path)))[..16] : "";
            var xattrs = f[1] is "f" or "d" ? await RunAsync("getfattr", ["-h", "-d", "-m", "security.capability|user\\..*", "--absolute-names", path]) : "";
            var acl = withAcls && f[1] is "f" or "d" ? await RunAsync("getfacl", ["-c", "-n", "-p", path]) : "";
            xattrs = string.Join(";", xattrs.Split('\n').Where(l => l.Contains('=', StringComparison.Ordinal)));
            acl = string.Join(";", acl.Split('\n').Where(l => l.Length > 0));
            result[f[0]] = $"{f[1]} {f[2]} {long.Parse(f[3]) - idShift}:{long.Parse(f[4]) - idShift} {f[5]} {f[6]} links={(f[1] == "d" ? "-" : f[7])} {content} {xattrs} {AclWithoutShift(acl, idShift)}";
        }
        return result;
    }

    private static string AclWithoutShift(string acl, int shift) =>
        System.Text.RegularExpressions.Regex.Replace(acl, @"user:(\d+):", m => $"user:{long.Parse(m.Groups[1].Value) - shift}:");

    public static async Task<string> RunAsync(string tool, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} {string.Join(' ', psi.ArgumentList)} failed ({process.ExitCode}): {await stderr}");
        }
        return await stdout;
    }

    /// <summary>
    /// Runs a command as root of a new user namespace mapped 0:100000:65536 (as root on the host we write the
    /// maps ourselves, like pve-container's lxc-usernsexec does through newuidmap).
    /// </summary>
    public static Task<string> RunInUserNamespaceAsync(IEnumerable<string> command)
    {
        const string perl = """
            use POSIX ();
            pipe(my $r1, my $w1); pipe(my $r2, my $w2);
            my $pid = fork() // die "fork: $!";
            if (!$pid) {
                close($r1); close($w2);
                syscall(272, 0x10000000 | 0x00020000) == 0 or die "unshare: $!";
                syswrite($w1, "1"); sysread($r2, my $go, 1);
                POSIX::setgid(0); POSIX::setuid(0);
                exec(@ARGV) or die "exec: $!";
            }
            close($w1); close($r2);
            sysread($r1, my $ready, 1);
            for my $k (qw(uid gid)) { open(my $fh, '>', "/proc/$pid/${k}_map") or die $!; print $fh "0 100000 65536\n"; close($fh) or die $!; }
            syswrite($w2, "1");
            waitpid($pid, 0);
            exit($? >> 8);
            """;
        return RunAsync("perl", ["-e", perl, .. command]);
    }
}
